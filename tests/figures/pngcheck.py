"""Check PNG bytes without trusting the writer: magic number, chunk CRCs, decodable image data, size."""

from __future__ import annotations

import struct
import zlib


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
