"""``STUDENT_DIR/report_data.npz``: what only the student's simulation knows, written for the report.

The student owns this file's writer and its key list (data flow student -> report: the report reads the file and
may import :data:`REPORT_DATA_KEYS` from here, the student never imports the report). Shapes: T raster steps,
N neurons (E first), D teacher dims.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import atomic_path

REPORT_DATA_KEYS = {
    "raster_t": "(T,) float s, times of the raster steps (held-out input)",
    "raster_exc": "(T, n_show_E) bool, spikes of a sample of E neurons",
    "raster_inh": "(T, n_show_I) bool, spikes of a sample of I neurons",
    "rates_hz": "(N,) float Hz, rate of every neuron on held-out data",
    "is_exc": "(N,) bool, True for excitatory neurons",
    "cv_isi": "(N,) float, CV of ISI per neuron (NaN: too few spikes)",
    "w_rec": "(N, N) float, signed recurrent weights W[post, pre], E first",
    "cca_null": "(D,) float, held-out canonical correlations against time-shifted teacher latents",
}


def write_report_data(path: str | Path, **arrays: np.ndarray) -> Path:
    """Write ``report_data.npz``: only keys of :data:`REPORT_DATA_KEYS`, shapes checked against each other
    (ValueError otherwise), atomically (compressed npz). Returns the path."""
    unknown = set(arrays) - set(REPORT_DATA_KEYS)
    if unknown:
        raise ValueError(f"unknown report_data keys {sorted(unknown)}; known: {sorted(REPORT_DATA_KEYS)}")
    a = {k: np.asarray(v) for k, v in arrays.items()}
    n = {len(a[k]) for k in ("rates_hz", "is_exc", "cv_isi") if k in a} | (
        set(a["w_rec"].shape) if "w_rec" in a else set())
    if len(n) > 1:
        raise ValueError(f"rates_hz, is_exc, cv_isi and w_rec disagree on the number of neurons: {sorted(n)}")
    t = {len(a[k]) for k in ("raster_t", "raster_exc", "raster_inh") if k in a}
    if len(t) > 1:
        raise ValueError(f"raster_t, raster_exc and raster_inh disagree on the number of steps: {sorted(t)}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **a)
    return Path(path)
