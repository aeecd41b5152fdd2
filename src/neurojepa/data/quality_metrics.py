"""Unit quality metrics computed from spike times, as in the Allen ecephys pipeline.

The definitions follow ``ecephys_spike_sorting/modules/quality_metrics/metrics.py`` (the code that produced the
metric columns of the Visual Behavior Neuropixels units table), so that a simulated unit and a real VBN unit are
judged by the same numbers:

- :func:`isi_violations`: the Hill et al. (2011, J Neurosci 31:8699) contamination rate. Spikes closer than
  ``min_isi`` to their predecessor are treated as duplicates and dropped; then, with ``N`` spikes, ``V`` inter-spike
  intervals shorter than ``isi_threshold`` and the unit's overall rate ``r = N / (max_time - min_time)``,
  ``isi_violations = V / (2 N (isi_threshold - min_isi)) / r``. It is a *rate ratio*, not a fraction: a unit with
  no refractory period at all (pure Poisson) scores about 0.5 and bursty contamination scores well above 1.
- :func:`presence_ratio`: the fraction of time bins of the session that contain at least one spike. Allen builds
  ``num_bins`` bin *edges* (so ``num_bins - 1`` bins) and divides by ``num_bins``, so the maximum is 0.99; we keep
  that quirk so that the usual ``presence_ratio > 0.9`` filter means the same thing here.
- :func:`firing_rate`: spikes per second over ``[min_time, max_time]``.

Allen's defaults: ``isi_threshold = 1.5 ms``, ``min_isi = 0.166 ms`` (one sample at 30 kHz would be 0.033 ms; the
pipeline uses the Kilosort template-overlap limit). ``amplitude_cutoff`` needs spike amplitudes and is therefore not
computed here (the simulator draws it, see :mod:`neurojepa.synthetic.simulate`).
"""

from __future__ import annotations

import numpy as np

ISI_THRESHOLD_S = 0.0015
MIN_ISI_S = 0.000166
PRESENCE_BINS = 100


def firing_rate(spike_train: np.ndarray, min_time: float, max_time: float) -> float:
    """Mean rate (Hz) of ``spike_train`` (s) over ``[min_time, max_time]`` (s)."""
    return float(len(spike_train) / (max_time - min_time))


def isi_violations(
    spike_train: np.ndarray,
    min_time: float,
    max_time: float,
    isi_threshold: float = ISI_THRESHOLD_S,
    min_isi: float = MIN_ISI_S,
) -> tuple[float, int]:
    """Hill et al. (2011) refractory-violation rate of one sorted spike train (s).

    Returns ``(rate_ratio, n_violations)``; ``(0.0, 0)`` for a unit with fewer than two spikes.
    """
    t = np.asarray(spike_train, dtype=np.float64)
    if len(t) < 2:
        return 0.0, 0
    # spikes at (almost) the same time as their predecessor are double-detections, not violations
    duplicates = np.flatnonzero(np.diff(t) <= min_isi)
    t = np.delete(t, duplicates + 1)
    n_violations = int(np.count_nonzero(np.diff(t) < isi_threshold))
    violation_time = 2.0 * len(t) * (isi_threshold - min_isi)
    total_rate = firing_rate(t, min_time, max_time)
    return float(n_violations / violation_time / total_rate), n_violations


def presence_ratio(spike_train: np.ndarray, min_time: float, max_time: float, num_bins: int = PRESENCE_BINS) -> float:
    """Fraction of the ``num_bins - 1`` equal bins of ``[min_time, max_time]`` holding a spike, over ``num_bins``."""
    counts, _ = np.histogram(spike_train, np.linspace(min_time, max_time, num_bins))
    return float(np.count_nonzero(counts) / num_bins)
