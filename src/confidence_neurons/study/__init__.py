"""Studies beyond one machine: many scans as Ray tasks (``runner``), read from a study file
(``spec``), one sweep sharded over Ray workers (``sharded``), and scans of one architecture
compared neuron by neuron (``matched``). Ray is optional (``engine``).
"""
