"""Scans of one architecture compared neuron by neuron: revisions of a model over training, a base
model and its fine-tune. Their final layers have the same neurons by index, so neuron ``l.i`` of
one scan is neuron ``l.i`` of the other (the paper's App. F follows named neurons across
checkpoints the same way); the flagged sets are compared by their overlap (IoU).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

#: What the study's per-neuron table holds for each scan (columns of ``analysis.table.NEURON_COLUMNS``).
MATCHED_FIELDS = ("rho", "TE", "DE", "ln_share", "is_entropy_neuron", "is_token_frequency_neuron")
#: The flagged sets whose overlap is measured: rule column -> short name.
FLAGGED = {"is_entropy_neuron": "entropy", "is_token_frequency_neuron": "token_frequency"}

_STEP = re.compile(r"(?:^|[^0-9a-z])(?:step|ckpt|checkpoint|iter|global_step)[-_]?(\d+)$", re.IGNORECASE)


def training_step(revision: str | None) -> int | None:
    """The training step a revision names (Pythia's ``step143000`` -> 143000), else None."""
    if revision is None:
        return None
    m = _STEP.search(revision) or re.fullmatch(r"(\d+)", revision)
    return int(m.group(1)) if m else None


def group_key(settings: dict) -> tuple:
    """Scans with the same key have the same final-layer neurons by index: architecture and sizes."""
    return (
        settings.get("architecture"),
        int(settings["d_model"]),
        int(settings["d_mlp"]),
        int(settings["d_vocab"]),
        int(settings["final_layer"]),
    )


@dataclass
class MatchedNeurons:
    """One group of scans of one architecture on one corpus, matched by neuron index.

    ``neurons``: one row per (scan, neuron): group, label, revision, step, order (the scan's place
    in the group), neuron, name and ``MATCHED_FIELDS``. ``overlap``: one row per pair of scans and
    flagged set: group, set, label_a, label_b, n_a, n_b, n_both, iou (|A & B| / |A | B|; NaN
    when both are empty). ``top``: the names of the neurons the figure follows.
    """

    group: str
    labels: list[str]
    neurons: pd.DataFrame
    overlap: pd.DataFrame
    top: list[str]


def match(group: str, labels: list[str], revisions: list[str | None], tables: list[pd.DataFrame], n_top: int = 5):
    """Match the neuron tables of one group by index, and the overlap of their flagged sets.

    The runs are ordered by training step where every revision names one, else kept in order.
    The neurons followed (``top``) are those flagged by the entropy rule in any run, ranked by
    their largest TE x (1 - DE/TE); where no run flags one, the same ranking over all neurons.
    """
    steps = [training_step(r) for r in revisions]
    order = list(range(len(labels)))
    if all(s is not None for s in steps):
        order.sort(key=lambda i: steps[i])
    rows = []
    for place, i in enumerate(order):
        t = tables[i]
        part = t[["neuron", "name", *MATCHED_FIELDS]].copy()
        part.insert(0, "order", place)
        part.insert(0, "step", steps[i])
        part.insert(0, "revision", revisions[i])
        part.insert(0, "label", labels[i])
        part.insert(0, "group", group)
        rows.append(part)
    neurons = pd.concat(rows, ignore_index=True)
    overlap = []
    for a, b in combinations(order, 2):
        for column, name in FLAGGED.items():
            sa = set(tables[a].loc[tables[a][column].astype(bool), "neuron"])
            sb = set(tables[b].loc[tables[b][column].astype(bool), "neuron"])
            union = len(sa | sb)
            overlap.append(
                {
                    "group": group,
                    "set": name,
                    "label_a": labels[a],
                    "label_b": labels[b],
                    "n_a": len(sa),
                    "n_b": len(sb),
                    "n_both": len(sa & sb),
                    "iou": len(sa & sb) / union if union else np.nan,
                }
            )
    score = (neurons["TE"] * neurons["ln_share"].clip(lower=0)).fillna(0)
    flagged = neurons["is_entropy_neuron"].astype(bool)
    pool = neurons[flagged] if flagged.any() else neurons
    best = score[pool.index].groupby(pool["name"]).max().sort_values(ascending=False)
    return MatchedNeurons(
        group=group,
        labels=[labels[i] for i in order],
        neurons=neurons,
        overlap=pd.DataFrame(overlap),
        top=list(best.index[:n_top]),
    )


def wide(m: MatchedNeurons) -> pd.DataFrame:
    """One row per neuron, one column per (field, run): the per-neuron table across the runs."""
    t = m.neurons.pivot(index="name", columns="label", values=["rho", "TE", "ln_share", "is_entropy_neuron"])
    t = t.reindex(columns=m.labels, level=1)
    t.columns = [f"{f} [{label}]" for f, label in t.columns]
    return t.reset_index()
