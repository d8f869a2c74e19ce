"""confidence-neurons: find and explain the neurons by which language models regulate their confidence.

    import confidence_neurons as cn
    model = cn.load_model()                      # embedded SmolLM2-135M, or a hub id / directory / GGUF
    result = cn.scan(model, cn.ScanConfig(n_seqs=8))
    result.neurons                               # pandas DataFrame, one row per final-layer neuron
"""

from confidence_neurons.analysis.selection import EntropyNeuronRule
from confidence_neurons.models.loading import load_model
from confidence_neurons.scan import ScanConfig, ScanResult, run_scan, scan

__all__ = ["EntropyNeuronRule", "ScanConfig", "ScanResult", "load_model", "run_scan", "scan"]
__version__ = "0.1.0"
