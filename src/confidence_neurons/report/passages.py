"""Example passages coloured by a neuron's activation (Stolfo et al. 2024, Fig. 4b analogue).

:func:`passages_html` returns an HTML fragment for
:class:`confidence_neurons.report.html.ReportSection` ``html``: no ``<html>`` /
``<head>``, no JavaScript, one ``<style>`` block whose rules are all scoped under
the ``cnp`` class prefix.  Each passage is running text, one ``<span>`` per
token, its background coloured by the neuron's activation relative to
``mean_activation`` (blue below, white at, red above the mean, on one scale for
all passages; the legend gives the numbers).  The highlighted position is boxed
(class ``cnp-hl``).  Hovering a token shows its details (``title`` attribute).
Under each passage a table lists the highlighted position and its neighbours:
token, next token, activation, the clean top-5 predictions with probabilities,
and the loss on the next token with the neuron (clean) and without it (clip
mean-ablated).

Position ``i``'s predictions and losses are those for the token that follows
it (``tokens[i + 1]``); NaN losses show as "—".  All token text is escaped,
with whitespace made visible (``·`` for spaces, ``↵`` for newlines, which also
break the running text; see :func:`confidence_neurons.figures.activity.visible_token`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from confidence_neurons.figures.activity import visible_token

__all__ = ["CSS_PREFIX", "passages_html"]

CSS_PREFIX = "cnp"
_TOP_K = 5
_ABOVE = (214, 39, 40)  # red, as for entropy neurons
_BELOW = (31, 119, 180)  # blue
_MAX_ALPHA = 0.8

_CSS = """
.cnp { margin: 10px 0 22px; }
.cnp-legend { display: flex; align-items: center; gap: 8px; font-size: .82rem; color: #5b6472; margin: 4px 0 12px; flex-wrap: wrap; }
.cnp-bar { width: 220px; height: 12px; border: 1px solid #c9ced6; border-radius: 3px;
           background: linear-gradient(to right, rgba(31,119,180,.8), #ffffff, rgba(214,39,40,.8)); }
.cnp-swatch-hl { display: inline-block; padding: 0 4px; outline: 2px solid #111; border-radius: 2px; }
.cnp-passage { border: 1px solid #e3e7ee; border-radius: 6px; padding: 10px 14px; margin: 12px 0; }
.cnp-title { font-size: .95rem; font-weight: 600; margin: 0 0 6px; }
.cnp-text { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .86rem;
            line-height: 1.9; margin: 0 0 10px; max-width: none; word-break: break-word; }
.cnp-tok { padding: 1px 0; border-radius: 2px; }
.cnp-tok.cnp-hl { outline: 2px solid #111; outline-offset: 1px; font-weight: 700; }
.cnp-ws { color: #9aa3ae; }
.cnp-table { border-collapse: collapse; font-size: .8rem; width: auto; }
.cnp-table th, .cnp-table td { padding: 3px 8px; border-bottom: 1px solid #e3e7ee; text-align: left; vertical-align: top; }
.cnp-table th { background: #f6f8fb; font-weight: 600; white-space: nowrap; }
.cnp-table td.cnp-num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.cnp-table tr.cnp-hl-row td { font-weight: 700; background: #fff6d6; }
.cnp-table code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.cnp-pred { white-space: nowrap; margin-right: 10px; }
.cnp-pred .cnp-p { color: #5b6472; }
"""

_REQUIRED = ("tokens", "activation", "loss_clean", "loss_ablated", "top_predictions", "highlight")


def _token_html(text: Any) -> str:
    """Escaped token with visible whitespace; the whitespace marks are muted."""
    out = []
    for ch in visible_token(text):
        esc = html.escape(ch)
        if ch in "·↵⇥␍⍽∅":
            out.append(f'<span class="cnp-ws">{esc}</span>')
        else:
            out.append(esc)
    return "".join(out)


def _num(value: Any, fmt: str = ".3f") -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "—"
    return "—" if not math.isfinite(v) else format(v, fmt)


def _background(activation: float, mean: float, scale: float) -> str:
    if not math.isfinite(activation):
        return "transparent"
    t = max(-1.0, min(1.0, (activation - mean) / scale))
    r, g, b = _ABOVE if t >= 0 else _BELOW
    return f"rgba({r},{g},{b},{abs(t) * _MAX_ALPHA:.3f})"


def _check(passage: dict, i: int) -> int:
    missing = [k for k in _REQUIRED if k not in passage]
    if missing:
        raise KeyError(f"passages[{i}] lacks key(s) {missing}")
    n = len(passage["tokens"])
    for key in ("activation", "loss_clean", "loss_ablated", "top_predictions"):
        if len(passage[key]) != n:
            raise ValueError(f"passages[{i}][{key!r}] has {len(passage[key])} entries for {n} tokens")
    h = int(passage["highlight"])
    if not 0 <= h < n:
        raise ValueError(f"passages[{i}]['highlight'] = {h} is outside 0..{n - 1}")
    return h


def _title_attr(passage: dict, j: int) -> str:
    tokens = passage["tokens"]
    nxt = visible_token(tokens[j + 1]) if j + 1 < len(tokens) else "(end)"
    top = passage["top_predictions"][j] or []
    best = ", ".join(f"{visible_token(t)} {float(p):.2f}" for t, p in list(top)[:3])
    lines = [
        f"pos {j}: {visible_token(tokens[j])}",
        f"activation {_num(passage['activation'][j])}",
        f"next: {nxt}",
        f"loss {_num(passage['loss_clean'][j])} (clean) → {_num(passage['loss_ablated'][j])} (ablated)",
    ]
    if best:
        lines.append(f"top: {best}")
    return html.escape("\n".join(lines), quote=True)


def _running_text(passage: dict, h: int, mean: float, scale: float) -> str:
    spans = []
    for j, tok in enumerate(passage["tokens"]):
        cls = "cnp-tok cnp-hl" if j == h else "cnp-tok"
        bg = _background(float(passage["activation"][j]), mean, scale)
        span = (
            f'<span class="{cls}" data-pos="{j}" style="background:{bg}" '
            f'title="{_title_attr(passage, j)}">{_token_html(tok)}</span>'
        )
        if "\n" in str(tok):
            span += "<br>"
        spans.append(span)
    return '<p class="cnp-text">' + "<wbr>".join(spans) + "</p>"


def _predictions(top: Sequence[tuple[str, float]] | None) -> str:
    items = []
    for tok, p in list(top or [])[:_TOP_K]:
        items.append(
            f'<span class="cnp-pred"><code>{_token_html(tok)}</code> <span class="cnp-p">{_num(p, ".3f")}</span></span>'
        )
    return " ".join(items) if items else "—"


def _table(passage: dict, h: int, context: int) -> str:
    tokens = passage["tokens"]
    lo, hi = max(0, h - context), min(len(tokens), h + context + 1)
    head = (
        "<tr><th>pos</th><th>token</th><th>next token</th><th>activation</th>"
        f"<th>top-{_TOP_K} predictions (clean, probability)</th>"
        "<th>loss with neuron</th><th>loss without (clip-ablated)</th><th>Δloss</th></tr>"
    )
    rows = []
    for j in range(lo, hi):
        nxt = f"<code>{_token_html(tokens[j + 1])}</code>" if j + 1 < len(tokens) else "—"
        clean, ablated = passage["loss_clean"][j], passage["loss_ablated"][j]
        try:
            delta = float(ablated) - float(clean)
        except (TypeError, ValueError):
            delta = float("nan")
        cls = ' class="cnp-hl-row"' if j == h else ""
        rows.append(
            f'<tr{cls}><td class="cnp-num">{j}</td><td><code>{_token_html(tokens[j])}</code></td><td>{nxt}</td>'
            f'<td class="cnp-num">{_num(passage["activation"][j])}</td>'
            f"<td>{_predictions(passage['top_predictions'][j])}</td>"
            f'<td class="cnp-num">{_num(clean)}</td><td class="cnp-num">{_num(ablated)}</td>'
            f'<td class="cnp-num">{_num(delta, "+.3f")}</td></tr>'
        )
    return f'<table class="cnp-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def passages_html(
    passages: list[dict],
    mean_activation: float,
    neuron_name: str,
    *,
    context: int = 2,
) -> str:
    """HTML fragment showing each passage coloured by the activation of ``neuron_name``.

    Each passage dict has ``title`` (str, optional), ``tokens`` (list of str),
    ``activation``, ``loss_clean``, ``loss_ablated`` (lists of float, one per
    token), ``top_predictions`` (per token, a list of ``(token, probability)``,
    best first; the first five are shown) and ``highlight`` (index of the boxed
    position).  ``context`` neighbours on each side of the highlight get a row in
    the table.  The colour scale is shared by all passages: full colour at the
    largest |activation − mean_activation| over all of them.
    """
    if context < 0:
        raise ValueError("context must be >= 0")
    mean = float(mean_activation)
    highlights = [_check(p, i) for i, p in enumerate(passages)]
    dev = [abs(float(a) - mean) for p in passages for a in p["activation"] if a is not None and math.isfinite(float(a))]
    scale = max(dev) if dev and max(dev) > 0 else 1.0
    name = html.escape(str(neuron_name))

    parts = [f'<div class="{CSS_PREFIX}">', f"<style>{_CSS}</style>"]
    parts.append(
        '<div class="cnp-legend">'
        f"<span>activation of neuron <b>{name}</b>:</span>"
        f"<span>{_num(mean - scale)}</span>"
        '<span class="cnp-bar" role="img" aria-label="colour scale: blue below the mean, white at the mean, red above"></span>'
        f"<span>{_num(mean + scale)}</span>"
        f"<span>(white = mean {_num(mean, '.4g')}; blue below, red above)</span>"
        '<span class="cnp-swatch-hl">boxed</span><span>= highlighted position; hover a token for details; '
        "· = space, ↵ = newline</span>"
        "</div>"
    )
    if not passages:
        parts.append('<p class="cnp-empty">(no passages)</p>')
    for i, (p, h) in enumerate(zip(passages, highlights), start=1):
        title = html.escape(str(p.get("title") or f"Passage {i}"))
        parts.append('<div class="cnp-passage">')
        parts.append(f'<div class="cnp-title">{title}</div>')
        parts.append(_running_text(p, h, mean, scale))
        parts.append(_table(p, h, context))
        parts.append("</div>")
    parts.append("</div>")
    return "\n".join(parts)
