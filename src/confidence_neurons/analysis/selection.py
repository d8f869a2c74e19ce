"""Which final-layer neurons are entropy and token frequency neurons: documented, settable rules.

The paper finds entropy neurons by two signatures. Sec. 3.1: a large output-weight norm with a
small LogitVar (Eq. 3, Fig. 2a). Sec. 3.2-3.4: they write into W_U's effective null space (high
rho) and their effect on the loss is mostly mediated by the final norm's scale (high 1 - DE/TE).
The default rule uses the second, which Sec. 3.4 offers as the way to find them across model
families:

    rho >= min_rho  and  ln_share >= min_ln_share  and  TE >= min_te_ratio * median(TE)

and the first can be required on top (``min_norm_pct``, ``max_logit_var_pct``: percentiles of
the norm and of LogitVar among the layer's neurons; off by default). ``select="top-rho"``
instead takes the ``top_n`` neurons with the highest rho, as the authors' induction code does
(top 10, k = 12 on GPT-2 Small); the percentile requirements, when set, still apply.

Defaults (0.25, 0.3, 2.0): the paper reports 1 - DE/TE around 0.8 for the entropy neurons of
GPT-2 Small, LLaMA2 7B and Phi-2 but only 0.3-0.4 for Pythia and Gemma (Appendix F), so 0.3
keeps every family; raise it to 0.5 or more for a stricter rule on GPT-2-like models. On the
embedded SmolLM2-135M the two neurons with the highest rho (29.830, 29.1022, rho ~ 0.85) have
1 - DE/TE of 0.3-0.6 depending on the text, and the next candidate 0.23.

The weight statistics the rules read are those of the direction written into the residual
(``rho_written``, ``norm_written``, ``logit_var_written``; see ``analysis.weights``), which are the
raw ones except on models with a post-MLP norm; a table without them falls back to the raw columns.

Percentile ranks (:func:`percentile_rank`) are 100 x the share of the layer's neurons whose value
is at most the neuron's own: the largest value has 100, the smallest 100/d_mlp.

A neuron is *borderline* (:func:`borderline_neurons`) when it meets every criterion of a rule but
one, and misses that one by less than ``BORDERLINE_SHORTFALL`` (20%) of the threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from confidence_neurons.errors import ConfigError
from confidence_neurons.settings import check_fields

#: A neuron that misses one criterion by less than this share of its threshold is borderline.
BORDERLINE_SHORTFALL = 0.2

#: Columns of :func:`borderline_neurons`.
BORDERLINE_COLUMNS = ["name", "family", "criterion", "value", "threshold", "shortfall"]


def percentile_rank(values: pd.Series | np.ndarray) -> pd.Series:
    """100 x the share of entries <= each entry (ties share the highest rank); NaN stays NaN."""
    return pd.Series(values, dtype=float).rank(method="max", pct=True) * 100


def _column(table: pd.DataFrame, written: str, raw: str) -> pd.Series:
    return table[written] if written in table else table[raw]


@dataclass(frozen=True)
class Criterion:
    """One test of a rule on every row of a table: ``value op threshold`` (``passed`` may be rank-based)."""

    label: str
    value: pd.Series
    op: Literal[">=", "<="]
    threshold: float
    passed: pd.Series

    def shortfall(self) -> pd.Series:
        """How far each row misses the threshold, as a share of |threshold| (0 where it passes)."""
        miss = (self.threshold - self.value) if self.op == ">=" else (self.value - self.threshold)
        scale = abs(self.threshold) if self.threshold != 0 else np.inf
        return (miss / scale).clip(lower=0).where(~self.passed, 0.0)


def _at_least(label: str, value: pd.Series, threshold: float) -> Criterion:
    return Criterion(label, value, ">=", float(threshold), value >= threshold)


def _at_most(label: str, value: pd.Series, threshold: float) -> Criterion:
    return Criterion(label, value, "<=", float(threshold), value <= threshold)


def _percentile(value: float | None, name: str) -> None:
    if value is not None and not 0 <= value <= 100:
        raise ConfigError(f"{name} = {value} must be a percentile in [0, 100]", field=name)


@dataclass(frozen=True)
class EntropyNeuronRule:
    """The entropy-neuron rule (module docstring): rho, 1 - DE/TE and TE thresholds, or the top n by rho;
    optionally the Sec. 3.1 signature (norm and LogitVar percentiles) on top.
    """

    min_rho: float = field(
        default=0.25,
        metadata={
            "help": "entropy-neuron rule: minimum rho, the share of |w_out| in W_U's bottom-k singular directions",
            "minimum": 0,
            "maximum": 1,
        },
    )
    min_ln_share: float = field(
        default=0.3,
        metadata={
            "help": "entropy-neuron rule: minimum 1 - DE/TE, the share of the effect through the norm's scale",
            "minimum": 0,
            "maximum": 1,
        },
    )
    min_te_ratio: float = field(
        default=2.0,
        metadata={"help": "entropy-neuron rule: minimum TE as a multiple of the layer's median TE", "minimum": 0},
    )
    select: Literal["rule", "top-rho"] = field(
        default="rule",
        metadata={
            "help": "entropy neurons by the thresholds (rule) or as the top-n neurons by rho (top-rho, "
            "the authors' induction code: top 10 with k = 12)"
        },
    )
    top_n: int = field(
        default=10, metadata={"help": "with --select top-rho: how many neurons (fewer than d_mlp)", "minimum": 1}
    )
    min_norm_pct: float | None = field(
        default=None,
        metadata={
            "help": "entropy-neuron rule: also require |w_out| at or above this percentile of the layer "
            "(Sec. 3.1 signature; e.g. 90; default: not required)",
            "minimum": 0,
            "maximum": 100,
        },
    )
    max_logit_var_pct: float | None = field(
        default=None,
        metadata={
            "help": "entropy-neuron rule: also require LogitVar at or below this percentile of the layer "
            "(Sec. 3.1 signature; e.g. 10; default: not required)",
            "minimum": 0,
            "maximum": 100,
        },
    )

    def __post_init__(self) -> None:
        check_fields(self, bounds=False)  # types and finiteness; the commands also hold the declared bounds
        if not 0 <= self.min_rho <= 1:
            raise ConfigError(f"min_rho = {self.min_rho} must lie in [0, 1]", field="min_rho")
        if self.min_te_ratio < 0:
            raise ConfigError(f"min_te_ratio = {self.min_te_ratio} must be >= 0", field="min_te_ratio")
        if self.select not in ("rule", "top-rho"):
            raise ConfigError(f"select = {self.select!r} must be 'rule' or 'top-rho'", field="select")
        if self.top_n < 1:
            raise ConfigError(f"top_n = {self.top_n} must be at least 1", field="top_n")
        _percentile(self.min_norm_pct, "min_norm_pct")
        _percentile(self.max_logit_var_pct, "max_logit_var_pct")

    def describe(self) -> str:
        if self.select == "top-rho":
            text = f"the top {self.top_n} neurons by rho"
        else:
            text = (
                f"rho >= {self.min_rho} and 1 - DE/TE >= {self.min_ln_share} and TE >= {self.min_te_ratio} x median TE"
            )
        if self.min_norm_pct is not None:
            text += f" and |w_out| percentile >= {self.min_norm_pct:g}"
        if self.max_logit_var_pct is not None:
            text += f" and LogitVar percentile <= {self.max_logit_var_pct:g}"
        return text

    def to_dict(self) -> dict:
        return asdict(self)

    def criteria(self, table: pd.DataFrame) -> list[Criterion]:
        """The tests this rule makes on a neuron table (columns rho[_written], ln_share, TE, and the
        norm and LogitVar columns when the signature is required).
        """
        rho = _column(table, "rho_written", "rho")
        if self.select == "top-rho":
            order = np.lexsort((np.arange(len(rho)), -rho.fillna(-np.inf).to_numpy()))
            top = np.zeros(len(rho), dtype=bool)
            top[order[: self.top_n]] = True
            nth = float(rho.iloc[order[min(self.top_n, len(rho)) - 1]]) if len(rho) else np.nan
            out = [Criterion(f"rho among the top {self.top_n}", rho, ">=", nth, pd.Series(top, index=rho.index))]
        else:
            te_floor = self.min_te_ratio * float(table["TE"].median())
            out = [
                _at_least("rho", rho, self.min_rho),
                _at_least("1 - DE/TE", table["ln_share"], self.min_ln_share),
                _at_least(f"TE (>= {self.min_te_ratio:g} x median)", table["TE"], te_floor),
            ]
        if self.min_norm_pct is not None:
            pct = percentile_rank(_column(table, "norm_written", "w_out_norm")).set_axis(table.index)
            out.append(_at_least("|w_out| percentile", pct, self.min_norm_pct))
        if self.max_logit_var_pct is not None:
            pct = percentile_rank(_column(table, "logit_var_written", "logit_var")).set_axis(table.index)
            out.append(_at_most("LogitVar percentile", pct, self.max_logit_var_pct))
        return out


def _all_pass(criteria: list[Criterion], index: pd.Index) -> pd.Series:
    mask = pd.Series(True, index=index)
    for c in criteria:
        mask &= c.passed.fillna(False).astype(bool)
    return mask


def select_entropy_neurons(table: pd.DataFrame, rule: EntropyNeuronRule = EntropyNeuronRule()) -> pd.Series:
    """Boolean mask over the rows of a neuron table (see :meth:`EntropyNeuronRule.criteria`)."""
    return _all_pass(rule.criteria(table), table.index)


@dataclass(frozen=True)
class TokenFrequencyNeuronRule:
    """Token frequency neurons (Sec. 4): most of their effect on the loss runs along v_freq, and their
    ablation moves the output's distance to P_freq a lot (Fig. 3b: large 1 - DE_freq/TE *and* large |dKL|).

        1 - DE_freq/TE >= min_freq_share  and  TE >= min_te_ratio * median(TE)
        and  |dKL| percentile >= min_dkl_pct  [and not an entropy neuron]

    The paper's token frequency neurons have 1 - DE_freq/TE around 0.6 (Pythia 410M, App. G) and
    |dKL| comparable to the entropy neurons' (Sec. 4), so the default asks for the layer's top 10%
    by |dKL|. Entropy neurons also move the output along v_freq when they rescale the logits, so by
    default they are left to their own family (``exclude_entropy_neurons``). When the unigram counts
    are too sparse to estimate log-frequencies (``data.unigrams.CountSparsity``) no neuron is
    flagged unless ``flag_sparse_counts`` is set.
    """

    min_freq_share: float = field(
        default=0.5,
        metadata={"help": "token-frequency-neuron rule: minimum 1 - DE_freq/TE", "flag": "--min-freq-share"},
    )
    min_te_ratio: float = field(
        default=2.0,
        metadata={
            "help": "token-frequency-neuron rule: minimum TE as a multiple of the layer's median TE",
            "minimum": 0,
        },
    )
    min_dkl_pct: float = field(
        default=90.0,
        metadata={
            "help": "token-frequency-neuron rule: minimum percentile of mean |change of KL(P_freq || P_model)| "
            "among the layer's neurons (Fig. 3b; 0 turns it off)",
            "minimum": 0,
            "maximum": 100,
        },
    )
    exclude_entropy_neurons: bool = field(
        default=True, metadata={"help": "token-frequency-neuron rule: leave entropy neurons to their own family"}
    )
    flag_sparse_counts: bool = field(
        default=False,
        metadata={
            "help": "flag token frequency neurons even when the unigram counts are too sparse for a "
            "log-frequency (results marked unreliable)",
            "flag": "--flag-token-frequency",
        },
    )

    def __post_init__(self) -> None:
        check_fields(self, bounds=False)
        if self.min_te_ratio < 0:
            raise ConfigError(f"min_te_ratio = {self.min_te_ratio} must be >= 0", field="min_te_ratio")
        _percentile(self.min_dkl_pct, "min_dkl_pct")

    def describe(self) -> str:
        tail = " and not an entropy neuron" if self.exclude_entropy_neurons else ""
        dkl = f" and |dKL| percentile >= {self.min_dkl_pct:g}" if self.min_dkl_pct > 0 else ""
        return f"1 - DE_freq/TE >= {self.min_freq_share} and TE >= {self.min_te_ratio} x median TE{dkl}{tail}"

    def to_dict(self) -> dict:
        return asdict(self)

    def criteria(self, table: pd.DataFrame) -> list[Criterion]:
        """The threshold tests (columns freq_share, TE, abs_delta_kl); the entropy exclusion is not one."""
        out = [
            _at_least("1 - DE_freq/TE", table["freq_share"], self.min_freq_share),
            _at_least(f"TE (>= {self.min_te_ratio:g} x median)", table["TE"], self.min_te_ratio * table["TE"].median()),
        ]
        if self.min_dkl_pct > 0:
            pct = percentile_rank(table["abs_delta_kl"]).set_axis(table.index)
            out.append(_at_least("|dKL| percentile", pct, self.min_dkl_pct))
        return out

    def applies(self, counts_reliable: bool) -> bool:
        """Whether the rule flags anything: with reliable counts, or when told to despite sparse ones."""
        return counts_reliable or self.flag_sparse_counts

    def eligible(self, table: pd.DataFrame) -> pd.Series:
        """Rows the rule may flag at all: not entropy neurons when they are excluded."""
        if self.exclude_entropy_neurons and "is_entropy_neuron" in table:
            return ~table["is_entropy_neuron"].astype(bool)
        return pd.Series(True, index=table.index)


def select_token_frequency_neurons(
    table: pd.DataFrame, rule: TokenFrequencyNeuronRule = TokenFrequencyNeuronRule(), counts_reliable: bool = True
) -> pd.Series:
    """Boolean mask over a neuron table with columns freq_share, TE, abs_delta_kl (and is_entropy_neuron);
    all False when the counts are sparse and the rule is not told to flag anyway.
    """
    if not rule.applies(counts_reliable):
        return pd.Series(False, index=table.index)
    return _all_pass(rule.criteria(table), table.index) & rule.eligible(table)


def _near_misses(table: pd.DataFrame, criteria: list[Criterion], family: str, eligible: pd.Series) -> pd.DataFrame:
    if not criteria or table.empty:
        return pd.DataFrame(columns=BORDERLINE_COLUMNS)
    failed = np.stack([~c.passed.fillna(False).astype(bool).to_numpy() for c in criteria], axis=1)
    one = (failed.sum(axis=1) == 1) & eligible.to_numpy()
    rows = []
    for j, c in enumerate(criteria):
        short = c.shortfall().to_numpy()
        hit = one & failed[:, j] & (short < BORDERLINE_SHORTFALL)
        for i in np.flatnonzero(hit):
            rows.append(
                {
                    "name": table["name"].iloc[i] if "name" in table else str(table.index[i]),
                    "family": family,
                    "criterion": f"{c.label} {c.op} {c.threshold:.4g}",
                    "value": float(c.value.iloc[i]),
                    "threshold": c.threshold,
                    "shortfall": float(short[i]),
                }
            )
    return pd.DataFrame(rows, columns=BORDERLINE_COLUMNS)


def borderline_neurons(
    table: pd.DataFrame,
    rule: EntropyNeuronRule = EntropyNeuronRule(),
    tf_rule: TokenFrequencyNeuronRule | None = None,
    counts_reliable: bool = True,
) -> pd.DataFrame:
    """Neurons that meet every criterion of a rule but one and miss it by less than ``BORDERLINE_SHORTFALL``
    of the threshold (``BORDERLINE_COLUMNS``: which criterion kept each out, its value, the threshold
    and the relative shortfall), nearest first within each family. Token frequency neurons are listed
    only when ``tf_rule`` is given, the table has the Sec. 4 columns and the rule applies.
    """
    parts = [_near_misses(table, rule.criteria(table), "entropy", ~select_entropy_neurons(table, rule))]
    if tf_rule is not None and "freq_share" in table and table["freq_share"].notna().any():
        if tf_rule.applies(counts_reliable):
            parts.append(_near_misses(table, tf_rule.criteria(table), "token frequency", tf_rule.eligible(table)))
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=BORDERLINE_COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(["family", "shortfall"], kind="stable").reset_index(drop=True)
