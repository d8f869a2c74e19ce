"""confidence-neurons: find and explain the neurons by which language models regulate their confidence.

import confidence_neurons as cn
model = cn.load_model()                      # embedded SmolLM2-135M, or a hub id / directory / GGUF
result = cn.scan(model, cn.ScanConfig(n_seqs=8))
result.neurons                               # pandas DataFrame, one row per final-layer neuron
cn.inspect_neuron(model, cn.InspectConfig(neuron="29.830"))
cn.load_run("runs/demo")                     # the typed result a finished run wrote
"""

from confidence_neurons._version import __version__ as __version__
from confidence_neurons.analysis.selection import EntropyNeuronRule, TokenFrequencyNeuronRule
from confidence_neurons.commands import load_run
from confidence_neurons.commands.compare import run as run_compare
from confidence_neurons.commands.induction import run as run_induction
from confidence_neurons.commands.inspect import run as run_inspect
from confidence_neurons.commands.scan import run as run_scan
from confidence_neurons.commands.steer import run as run_steer
from confidence_neurons.errors import ConfigError, ToolkitError
from confidence_neurons.models.loading import load_model
from confidence_neurons.studies.compare import CompareConfig, CompareResult, compare
from confidence_neurons.studies.induction import InductionConfig, InductionResult, induction
from confidence_neurons.studies.inspect import InspectConfig, InspectResult, inspect_neuron
from confidence_neurons.studies.scan import ScanConfig, ScanResult, scan
from confidence_neurons.studies.steer import SteerConfig, SteerResult, steer

__all__ = [
    "CompareConfig",
    "CompareResult",
    "ConfigError",
    "EntropyNeuronRule",
    "InductionConfig",
    "InductionResult",
    "InspectConfig",
    "InspectResult",
    "ScanConfig",
    "ScanResult",
    "SteerConfig",
    "SteerResult",
    "TokenFrequencyNeuronRule",
    "ToolkitError",
    "compare",
    "induction",
    "inspect_neuron",
    "load_model",
    "load_run",
    "run_compare",
    "run_induction",
    "run_inspect",
    "run_scan",
    "run_steer",
    "scan",
    "steer",
]
