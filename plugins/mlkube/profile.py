"""The training profile and live statistics share one histogram rule (issue 17, item 1).

A profile's feature histogram has ascending, distinct edges ``e0 < e1 < ... < eK`` (K >= 1
bins). Bin ``i`` holds the values ``e_i <= x < e_(i+1)``; the last bin also holds ``eK`` and
everything above it, the first everything below ``e0``. prepare-data writes the train split's
profile (``profile.json`` in the dataset directory, see :func:`mlkube.data.prepare`); the train
step puts it in the logged model's metadata under ``"profile"``; the serving runtime counts live
rows on the same edges (:mod:`mlkube.serve.stats`).

numpy is imported inside the functions: this module is light to import.
"""

from __future__ import annotations

from typing import Any

PROFILE_FILE = "profile.json"
PROFILE_VERSION = 1
BINS = 10  # quantile bins a feature gets (fewer where quantiles coincide)


def quantile_edges(values: Any, bins: int = BINS) -> list[float]:
    """Edges at the ``bins``-quantiles of ``values`` (1-D, finite), deduplicated; a constant
    column gets one bin around its value."""
    import numpy as np

    found = np.unique(np.quantile(np.asarray(values, dtype=np.float64),
                                  np.linspace(0.0, 1.0, bins + 1)))
    if len(found) < 2:
        value = float(found[0]) if len(found) else 0.0
        return [value - 0.5, value + 0.5]
    return [float(e) for e in found]


def bin_index(edges: Any, values: Any) -> Any:
    """Each value's bin (0 .. K-1) on ``edges`` (K+1 of them), by the module's rule."""
    import numpy as np

    return np.searchsorted(np.asarray(edges, dtype=np.float64)[1:-1], values, side="right")


def bin_counts(edges: Any, values: Any) -> Any:
    """How many of ``values`` fall in each of the K bins on ``edges`` (int64 array)."""
    import numpy as np

    return np.bincount(bin_index(edges, values), minlength=len(edges) - 1)
