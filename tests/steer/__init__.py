"""Tests of the steer command: the neuron dial against temperature scaling."""
