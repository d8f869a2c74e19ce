"""Which final-layer neurons are entropy neurons: a documented, settable rule.

The paper identifies entropy neurons by three properties (Sec. 3): they write into W_U's
effective null space (high rho, Sec. 3.4), their effect on the loss is mostly mediated by the
final norm's scale (high 1 - DE/TE, Sec. 3.2), and that effect is not negligible. The rule
flags a neuron when all three hold:

    rho >= min_rho  and  ln_share >= min_ln_share  and  TE >= min_te_ratio * median(TE)

Defaults (0.25, 0.3, 2.0): the paper reports 1 - DE/TE around 0.8 for the entropy neurons of
GPT-2 Small, LLaMA2 7B and Phi-2 but only 0.3-0.4 for Pythia and Gemma (Appendix F), so 0.3
keeps every family; raise it to 0.5 or more for a stricter rule on GPT-2-like models. On the
embedded SmolLM2-135M the two neurons with the highest rho (29.830, 29.1022, rho ~ 0.85) have
1 - DE/TE of 0.3-0.6 depending on the text, and the next candidate 0.23.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd

from confidence_neurons.errors import ConfigError


@dataclass(frozen=True)
class EntropyNeuronRule:
    """The entropy-neuron rule (module docstring): rho, 1 - DE/TE and TE thresholds."""

    min_rho: float = field(
        default=0.25,
        metadata={
            "help": "entropy-neuron rule: minimum rho, the share of |w_out| in W_U's bottom-k singular directions"
        },
    )
    min_ln_share: float = field(
        default=0.3,
        metadata={"help": "entropy-neuron rule: minimum 1 - DE/TE, the share of the effect through the norm's scale"},
    )
    min_te_ratio: float = field(
        default=2.0, metadata={"help": "entropy-neuron rule: minimum TE as a multiple of the layer's median TE"}
    )

    def __post_init__(self) -> None:
        if not 0 <= self.min_rho <= 1:
            raise ConfigError(f"min_rho = {self.min_rho} must lie in [0, 1]", field="min_rho")
        if self.min_te_ratio < 0:
            raise ConfigError(f"min_te_ratio = {self.min_te_ratio} must be >= 0", field="min_te_ratio")

    def describe(self) -> str:
        return f"rho >= {self.min_rho} and 1 - DE/TE >= {self.min_ln_share} and TE >= {self.min_te_ratio} x median TE"

    def to_dict(self) -> dict:
        return asdict(self)


def select_entropy_neurons(table: pd.DataFrame, rule: EntropyNeuronRule = EntropyNeuronRule()) -> pd.Series:
    """Boolean mask over the rows of a neuron table (columns rho, ln_share, TE)."""
    te_floor = rule.min_te_ratio * table["TE"].median()
    return (table["rho"] >= rule.min_rho) & (table["ln_share"] >= rule.min_ln_share) & (table["TE"] >= te_floor)


@dataclass(frozen=True)
class TokenFrequencyNeuronRule:
    """Token frequency neurons (Sec. 4): most of their effect on the loss runs along v_freq.

        1 - DE_freq/TE >= min_freq_share  and  TE >= min_te_ratio * median(TE)  [and not an entropy neuron]

    The paper's token frequency neurons have 1 - DE_freq/TE around 0.6 (Pythia 410M, App. G). Entropy
    neurons also move the output along v_freq when they rescale the logits, so by default they are
    left to their own family (``exclude_entropy_neurons``).
    """

    min_freq_share: float = field(
        default=0.5,
        metadata={"help": "token-frequency-neuron rule: minimum 1 - DE_freq/TE", "flag": "--min-freq-share"},
    )
    min_te_ratio: float = field(
        default=2.0, metadata={"help": "token-frequency-neuron rule: minimum TE as a multiple of the layer's median TE"}
    )
    exclude_entropy_neurons: bool = field(
        default=True, metadata={"help": "token-frequency-neuron rule: leave entropy neurons to their own family"}
    )

    def __post_init__(self) -> None:
        if self.min_te_ratio < 0:
            raise ConfigError(f"min_te_ratio = {self.min_te_ratio} must be >= 0", field="min_te_ratio")

    def describe(self) -> str:
        tail = " and not an entropy neuron" if self.exclude_entropy_neurons else ""
        return f"1 - DE_freq/TE >= {self.min_freq_share} and TE >= {self.min_te_ratio} x median TE{tail}"

    def to_dict(self) -> dict:
        return asdict(self)


def select_token_frequency_neurons(
    table: pd.DataFrame, rule: TokenFrequencyNeuronRule = TokenFrequencyNeuronRule()
) -> pd.Series:
    """Boolean mask over a neuron table with columns freq_share, TE (and is_entropy_neuron)."""
    mask = (table["freq_share"] >= rule.min_freq_share) & (table["TE"] >= rule.min_te_ratio * table["TE"].median())
    if rule.exclude_entropy_neurons and "is_entropy_neuron" in table:
        mask &= ~table["is_entropy_neuron"]
    return mask
