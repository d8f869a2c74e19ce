"""report.html in a real browser: headless Chromium, offline, every figure drawn, no JavaScript error.

The other report tests read the HTML as text; this one lets Chromium (Debian's ``chromium`` package)
run the page from disk with no network, then reads the DOM it ends up with. A script injected at
the very top of ``<head>`` records every uncaught error, failed resource load, unhandled promise
rejection and ``console.error`` call into ``<html data-js-errors="[...]">``; after the page has
run, every ``div.plotly-graph-div`` must hold the ``<svg class="main-svg">`` that plotly.js draws.
Where no Chromium is installed the tests skip and say so.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from confidence_neurons.figures import activity as A
from confidence_neurons.figures import entropy as E
from confidence_neurons.figures import frequency as F
from confidence_neurons.report.html import ReportSection, render_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
NO_BROWSER = "Chromium not installed (Debian package `chromium`); the report is not checked in a browser"
TIMEOUT_S = 120

# Runs before anything else on the page (plotly.js included) and keeps what went wrong, as JSON,
# where --dump-dom shows it. `loaded` marks that the load event fired, i.e. every script ran.
PROBE = """<script>
(function () {
  var root = document.documentElement, errors = [];
  function keep(text) { errors.push(String(text)); root.dataset.jsErrors = JSON.stringify(errors); }
  root.dataset.jsErrors = "[]";
  window.addEventListener("error", function (e) {
    if (e.target && e.target !== window) {  // a <script>, <img>, <link> ... that failed to load
      keep("failed to load <" + e.target.tagName.toLowerCase() + "> " + (e.target.src || e.target.href || ""));
    } else {
      keep("error: " + e.message + " (" + e.filename + ":" + e.lineno + ")");
    }
  }, true);
  window.addEventListener("unhandledrejection", function (e) { keep("unhandled rejection: " + e.reason); });
  var consoleError = console.error;
  console.error = function () {
    keep("console.error: " + Array.prototype.map.call(arguments, String).join(" "));
    return consoleError.apply(console, arguments);
  };
  window.addEventListener("load", function () { root.dataset.loaded = "1"; });
})();
</script>"""


def find_chromium() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip(NO_BROWSER)
    return path


class _Page(HTMLParser):
    """The figure divs of a dumped DOM, whether each holds an ``svg.main-svg``, and the root's data."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root: dict[str, str] = {}
        self.figures: list[tuple[str, bool]] = []  # (div id, has svg.main-svg)
        self._depth = 0  # open <div>s
        self._inside: int | None = None  # depth at which the current figure div opened

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        if tag == "html":
            self.root = a
        elif tag == "div":
            self._depth += 1
            if "plotly-graph-div" in classes and self._inside is None:
                self._inside = self._depth
                self.figures.append((a.get("id", ""), False))
        elif tag == "svg" and "main-svg" in classes and self._inside is not None:
            self.figures[-1] = (self.figures[-1][0], True)

    def handle_endtag(self, tag):
        if tag == "div":
            if self._inside == self._depth:
                self._inside = None
            self._depth -= 1


def with_probe(page: str) -> str:
    head = page.index("<head>") + len("<head>")
    return page[:head] + "\n" + PROBE + page[head:]


def open_in_chromium(chromium: str, report: Path, tmp_path: Path) -> _Page:
    """Load ``report`` (probe injected) in headless Chromium with no network; parse the final DOM."""
    probed = tmp_path / f"{report.stem}.probed.html"
    probed.write_text(with_probe(report.read_text(encoding="utf-8")), encoding="utf-8")
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000",
        "--dump-dom", probed.resolve().as_uri(),
    ]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Chromium did not finish {report.name} within {TIMEOUT_S} s")
    if done.returncode != 0 or "<html" not in done.stdout:
        pytest.fail(f"Chromium failed on {report.name} (exit {done.returncode}):\n{done.stderr[-3000:]}")
    page = _Page()
    page.feed(done.stdout)
    page.close()
    assert page.root.get("data-loaded") == "1", "the page's load event never fired (scripts did not all run)"
    assert "data-js-errors" in page.root, "the error probe did not run"
    return page


def js_errors(page: _Page) -> list[str]:
    return json.loads(page.root["data-js-errors"])


def assert_every_figure_drawn(page: _Page, expected: int | None = None) -> None:
    assert js_errors(page) == []
    assert len(page.figures) > 0, "no plotly-graph-div in the page"
    if expected is not None:
        assert len(page.figures) == expected, [div for div, _ in page.figures]
    undrawn = [div for div, drawn in page.figures if not drawn]
    assert not undrawn, f"figures without their svg.main-svg: {undrawn}"


# --------------------------------------------------------------------------- synthetic report


def make_neurons(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """A final-layer neuron table with a few entropy and token frequency neurons (every column the figures read)."""
    rng = np.random.default_rng(seed)
    ent = np.zeros(n, dtype=bool)
    ent[[7, 50, 91]] = True
    freq = np.zeros(n, dtype=bool)
    freq[[5, 44, 100]] = True
    te = rng.uniform(0.001, 0.02, n) + ent * 0.1 + freq * 0.05
    de = te * np.where(ent, 0.2, rng.uniform(0.8, 1.0, n))
    de_freq = te * np.where(freq, 0.4, rng.uniform(0.8, 1.1, n))
    return pd.DataFrame(
        {
            "layer": 11,
            "neuron": np.arange(n),
            "name": [f"11.{i}" for i in range(n)],
            "w_out_norm": rng.uniform(0.5, 2.0, n) + ent * 3,
            "logit_var": 10 ** rng.uniform(-2, 0, n) * np.where(ent, 0.01, 1.0),
            "rho": rng.uniform(0, 0.2, n) + ent * 0.7,
            "mean_activation": rng.normal(size=n),
            "TE": te,
            "DE": de,
            "ln_share": 1 - de / te,
            "abs_delta_entropy": rng.uniform(0, 0.05, n) + ent * 0.3,
            "top1_change_frac": rng.uniform(0, 0.1, n) * np.where(ent, 0.2, 1.0),
            "DE_freq": de_freq,
            "freq_share": 1 - de_freq / te,
            "abs_delta_kl": rng.uniform(0, 0.02, n) + freq * 0.1,
            "v_freq_cos": rng.uniform(-0.1, 0.1, n) - freq * 0.5,
            "is_entropy_neuron": ent,
            "is_token_frequency_neuron": freq,
        }
    )


def make_tokens(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Per-token effects of ablating one neuron (the columns of the Fig. 4 figures)."""
    rng = np.random.default_rng(seed)
    initial = rng.gamma(2.0, 1.5, n)
    words = ["the", " cat", "<script>", "\n", " & co"]
    return pd.DataFrame(
        {
            "seq": np.arange(n) // 100,
            "pos": np.arange(n) % 100,
            "token": [words[i % len(words)] for i in range(n)],
            "target": [words[(i + 1) % len(words)] for i in range(n)],
            "activation": rng.normal(0, 1, n),
            "initial_loss": initial,
            "delta_loss": 0.03 * (initial - 1.5) + rng.normal(0, 0.02, n),
            "delta_entropy": rng.normal(0, 0.1, n),
            "delta_kl": rng.normal(0.05, 0.03, n),
            "reciprocal_rank": 1.0 / rng.geometric(0.35, n),
            "clipped": rng.random(n) < 0.6,
        }
    )


def synthetic_figures() -> list:
    neurons = make_neurons()
    d_model, k = 32, 3
    rng = np.random.default_rng(1)
    sv = np.sort(rng.uniform(1, 10, d_model))[::-1].copy()
    sv[-k:] = rng.uniform(0, 0.05, k)
    cos_sv = rng.uniform(-0.2, 0.2, (len(neurons), d_model))
    return [
        E.fig_entropy_vs_prediction(neurons),
        E.fig_norm_vs_logitvar(neurons),
        E.fig_spectrum(sv, cos_sv, neurons, k),
        E.fig_rho_vs_ln_share(neurons, k),
        F.fig_freq_share_vs_dkl(neurons),
        A.fig_loss_change_vs_initial(make_tokens(), "11.7"),
    ]


def write_page(path: Path, sections: list[ReportSection]) -> Path:
    path.write_text(render_report(title="Browser check", settings={"seed": 0}, sections=sections), encoding="utf-8")
    return path


def test_synthetic_report_draws_every_figure_without_js_errors(chromium, tmp_path):
    figures = synthetic_figures()
    table = make_neurons().head(5)[["name", "TE", "DE", "is_entropy_neuron"]]
    report = write_page(
        tmp_path / "report.html",
        [
            ReportSection("Entropy neurons", "Fig. 1 and 2.", figures[:4], table=table),
            ReportSection("Token frequency neurons", "Fig. 3b.", figures[4:5]),
            ReportSection("Neuron activity", "Fig. 4a.", figures[5:]),
        ],
    )
    page = open_in_chromium(chromium, report, tmp_path)
    assert_every_figure_drawn(page, expected=len(figures))


BROKEN = {  # an HTML fragment that goes wrong -> what the probe must record for it
    "<script>undefinedFunction()</script>": "undefinedFunction",
    '<script>console.error("boom")</script>': "console.error: boom",
    '<script>Promise.reject(new Error("nope"))</script>': "unhandled rejection: Error: nope",
    '<img src="https://example.invalid/x.png" alt="">': "failed to load <img>",
}


def test_the_check_catches_a_broken_page(chromium, tmp_path):
    # One page (one Chromium start) with each kind of fault in its own section; a failing script
    # does not stop the others, so every fault must be recorded.
    sections = [ReportSection(f"Broken {i}", html=fragment) for i, fragment in enumerate(BROKEN, start=1)]
    sections.append(ReportSection("A figure", figures=synthetic_figures()[:1]))
    page = open_in_chromium(chromium, write_page(tmp_path / "broken.html", sections), tmp_path)
    errors = js_errors(page)
    for expected in BROKEN.values():
        assert any(expected in e for e in errors), (expected, errors)
    assert len(page.figures) == 1 and page.figures[0][1]  # the figure itself still drew
    with pytest.raises(AssertionError):
        assert_every_figure_drawn(page)


# --------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """``confidence-neurons scan`` of a tiny random GPT-2 on a small local corpus (as tests/commands/test_scan.py)."""
    from confidence_neurons.cli import main
    from tests.tiny import N_SPECIAL, VOCAB_SIZE, make_tiny_dir

    model = make_tiny_dir("gpt2", tmp_path_factory.mktemp("model"))
    rng = random.Random(0)
    words = [f"w{i}" for i in range(VOCAB_SIZE - N_SPECIAL)]
    weights = [1 / (r + 1) for r in range(len(words))]
    corpus = tmp_path_factory.mktemp("corpus")
    for d in range(6):
        (corpus / f"doc{d}.txt").write_text(" ".join(rng.choices(words, weights, k=400)))
    out = tmp_path_factory.mktemp("scan") / "run"
    args = ["scan", "--model", str(model), "--dataset", str(corpus), "--n-seqs", "4", "--seq-len", "32",
            "--neuron-chunk", "32", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    return out


def test_report_of_a_real_scan_draws_every_figure(chromium, tiny_run, tmp_path):
    page = open_in_chromium(chromium, tiny_run / "report.html", tmp_path)
    assert_every_figure_drawn(page)
