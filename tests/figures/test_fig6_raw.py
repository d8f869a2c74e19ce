"""Fig. 6 shows the raw singular values beside the median-normalised ones (App. E: "generally lower")."""

from __future__ import annotations

import numpy as np
import pandas as pd

from confidence_neurons.figures.compare import fig6_spectra


def test_fig6_draws_raw_singular_values_beside_the_normalised_ones():
    low, high = np.linspace(2.0, 0.1, 8), np.linspace(4.0, 0.2, 8)  # same shape, one twice as large
    spectra = pd.concat(
        pd.DataFrame(
            {
                "label": label,
                "index": np.arange(8),
                "singular_value": sv,
                "rel_index": np.arange(8) / 8,
                "rel_value": sv / np.median(sv),
            }
        )
        for label, sv in (("dropout", low), ("no dropout", high))
    )
    norm, raw = fig6_spectra(spectra), fig6_spectra(spectra, normalised=False)
    np.testing.assert_allclose(np.asarray(norm.data[0].y), np.asarray(norm.data[1].y))  # the median hides it
    np.testing.assert_allclose(np.asarray(raw.data[0].y), low)
    np.testing.assert_allclose(np.asarray(raw.data[1].y), high)
    assert "raw" in raw.layout.title.text and "median" not in raw.layout.yaxis.title.text
