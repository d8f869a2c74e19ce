"""The paper's named neurons against a scan (Sec. 3-6, App. F-G): one row per neuron the paper
names, this scan's values for it and a verdict (the names themselves are in ``confidence_neurons.paper``).
"""

from __future__ import annotations

import pandas as pd

from confidence_neurons.paper import PaperModel

PAPER_NEURON_COLUMNS = [
    "name",
    "paper_kind",
    "where",
    "in_model",
    "TE",
    "DE",
    "ln_share",
    "rho",
    "abs_delta_entropy",
    "freq_share",
    "abs_delta_kl",
    "is_entropy_neuron",
    "is_token_frequency_neuron",
    "verdict",
]


def paper_neuron_table(paper: PaperModel, neurons: pd.DataFrame) -> pd.DataFrame:
    """One row per neuron the paper names for ``paper``: this scan's values for it and a verdict.

    ``verdict`` is "found" when this scan flags the neuron with the rule of the kind the paper
    gives it (entropy, token frequency), "flagged as <other kind>" when only the other rule flags
    it, "not flagged" when neither does, and "not in this model's final layer" when the scan has
    no such neuron (another layer, or an index past d_mlp).
    """
    by_name = neurons.set_index(neurons["name"].astype(str))
    rows = []
    for named in paper.neurons:
        row = {"name": named.name, "paper_kind": named.kind, "where": named.where}
        if named.name not in by_name.index:
            rows.append({**row, "in_model": False, "verdict": "not in this model's final layer"})
            continue
        values = by_name.loc[named.name]
        row.update({c: values[c] for c in PAPER_NEURON_COLUMNS if c in values.index})
        ent, tf = bool(values["is_entropy_neuron"]), bool(values["is_token_frequency_neuron"])
        own, other = (ent, tf) if named.kind == "entropy" else (tf, ent)
        other_kind = "token frequency" if named.kind == "entropy" else "entropy"
        row["in_model"] = True
        row["verdict"] = "found" if own else (f"flagged as {other_kind}" if other else "not flagged")
        rows.append(row)
    table = pd.DataFrame(rows, columns=PAPER_NEURON_COLUMNS)
    for col in ("is_entropy_neuron", "is_token_frequency_neuron", "in_model"):
        table[col] = table[col].astype("boolean")
    return table


def found_counts(table: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """{kind: (found, named)} from :func:`paper_neuron_table`."""
    out = {}
    for kind, group in table.groupby("paper_kind", sort=False):
        out[str(kind)] = (int((group["verdict"] == "found").sum()), len(group))
    return out
