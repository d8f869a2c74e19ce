"""Plotly figures of the paper (Stolfo et al. 2024) and their HTML / PNG export.

:mod:`.style` (shared look), :mod:`.entropy` (Fig. 1, 2), :mod:`.effects` (Fig. 2c / 3c boxes),
:mod:`.frequency` (Fig. 3), :mod:`.activity` (Fig. 4), :mod:`.induction` (Fig. 5, 9-14),
:mod:`.export` (HTML and saving) and :mod:`.png` (the matplotlib PNG converter, which fixes the
Plotly subset every figure may use).
"""
