"""Check PNG bytes without trusting the writer: magic number, chunk CRCs, decodable image data, size."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from confidence_neurons.figures.export import figure_html
from confidence_neurons.figures.png import figure_to_png


def png_size(data: bytes) -> tuple[int, int]:
    """Validate a PNG (magic, CRCs, decodable IDAT) and return (width, height)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
        if kind == b"IEND":
            break
    assert size is not None and idat
    raw = zlib.decompress(idat)
    assert len(raw) >= size[1] * (1 + size[0])  # at least one byte per pixel and filter byte per row
    return size


def save_figure(fig, directory: Path, stem: str, *, png_scale: float = 2.0) -> dict[str, Path]:
    """Write a figure's HTML page and PNG into ``directory`` (as a run directory would) and return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {"html": directory / f"{stem}.html", "png": directory / f"{stem}.png"}
    out["html"].write_text(figure_html(fig), encoding="utf-8")
    out["png"].write_bytes(figure_to_png(fig, scale=png_scale))
    return out
