"""Studies: one module per study (scan, inspect, induction, steer, compare), each holding its config,
its result type, its pure computation and its figure list. Below the command line and the report,
which import them; above the analyses, the figures and the run folder, which they use.
"""
