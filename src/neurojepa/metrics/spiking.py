"""Spiking statistics of a simulated population: rates in Hz, irregularity (CV of ISI), Fano factor, silent and
saturated neurons, and E/I input-current correlation (balance).

Inputs are dense spike rasters ``spikes: (trials, steps, neurons)`` of 0/1 at a physical step ``dt`` in s; trials are
independent runs (e.g. held-out chunks), so inter-spike intervals never cross a trial boundary. Pure numpy.
"""

from __future__ import annotations

import numpy as np


def _as3d(spikes: np.ndarray) -> np.ndarray:
    s = np.asarray(spikes)
    if s.ndim == 2:
        s = s[None]
    if s.ndim != 3:
        raise ValueError(f"spikes must be (trials, steps, neurons) or (steps, neurons), got {s.shape}")
    return s


def rate_hz(spikes: np.ndarray, dt: float) -> np.ndarray:
    """Mean firing rate per neuron in Hz, (neurons,). dt: step in s."""
    s = _as3d(spikes)
    return s.sum(axis=(0, 1), dtype=np.float64) / (s.shape[0] * s.shape[1] * dt)


def _intervals(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spikes of s (trials, steps, neurons) sorted by neuron, then trial, then time -> (gaps, unit, same): gaps[k]
    the steps from sorted spike k to k + 1 (float64), unit the sorted spikes' neurons, same[k] whether spikes k and
    k + 1 are one neuron's in one trial (so gaps[same] are the inter-spike intervals)."""
    trial, step, unit = np.nonzero(s)
    order = np.lexsort((step, trial, unit))
    trial, step, unit = trial[order], step[order], unit[order]
    same = (unit[1:] == unit[:-1]) & (trial[1:] == trial[:-1])
    return np.diff(step).astype(np.float64), unit, same


def cv_isi(spikes: np.ndarray, min_intervals: int = 3) -> np.ndarray:
    """Coefficient of variation (std/mean) of inter-spike intervals per neuron, (neurons,); NaN with fewer than
    ``min_intervals`` intervals. Units cancel, so dt is not needed. Poisson firing gives ~1, a clock gives 0."""
    s = _as3d(spikes)
    out = np.full(s.shape[2], np.nan)
    gaps, unit, same = _intervals(s)
    isi, who = gaps[same], unit[1:][same]
    counts = np.bincount(who, minlength=s.shape[2])
    sums = np.bincount(who, weights=isi, minlength=s.shape[2])
    sq = np.bincount(who, weights=isi * isi, minlength=s.shape[2])
    ok = counts >= min_intervals
    mean = sums[ok] / counts[ok]
    var = np.maximum(sq[ok] / counts[ok] - mean**2, 0.0) * counts[ok] / (counts[ok] - 1)
    out[ok] = np.sqrt(var) / mean
    return out


def lv_isi(spikes: np.ndarray, min_intervals: int = 3) -> np.ndarray:
    """Local variation of inter-spike intervals per neuron (Shinomoto et al. 2003), (neurons,):
    ``LV = 3 / (n - 1) * sum_i ((I_i - I_{i+1}) / (I_i + I_{i+1}))^2`` over consecutive interval pairs (within a
    trial); NaN with fewer than ``min_intervals`` intervals. Poisson firing gives 1, a clock 0. Unlike the CV of ISI,
    it compares only neighbouring intervals, so slow rate modulation barely inflates it (reported beside the CV)."""
    s = _as3d(spikes)
    out = np.full(s.shape[2], np.nan)
    isi, unit, same = _intervals(s)
    pair = same[:-1] & same[1:]  # intervals i and i+1 both inside one neuron's trial
    a, b = isi[:-1][pair], isi[1:][pair]
    who = unit[1:-1][pair]
    n_int = np.bincount(unit[1:][same], minlength=s.shape[2])
    n_pair = np.bincount(who, minlength=s.shape[2])
    tot = np.bincount(who, weights=((a - b) / (a + b)) ** 2, minlength=s.shape[2])
    ok = (n_int >= min_intervals) & (n_pair > 0)
    out[ok] = 3.0 * tot[ok] / n_pair[ok]
    return out


def short_isi_fraction(spikes: np.ndarray, max_steps: int) -> float:
    """Fraction of all inter-spike intervals (pooled over neurons and trials) of at most ``max_steps`` steps: the
    doublets and bursts that drive the CV of ISI above 1 with the LV (e.g. ``max_steps`` = 5 ms / dt). Poisson
    firing at 10 Hz with a 2 ms refractory period gives ~3 %; NaN without intervals."""
    gaps, _, same = _intervals(_as3d(spikes))
    isi = gaps[same]
    return float(np.mean(isi <= max_steps)) if len(isi) else float("nan")


def fano_factor(spikes: np.ndarray, window_steps: int) -> np.ndarray:
    """Fano factor (variance / mean of spike counts in non-overlapping windows of ``window_steps``) per neuron,
    (neurons,); NaN for silent neurons. Poisson firing gives ~1."""
    s = _as3d(spikes)
    n_win = s.shape[1] // window_steps
    if n_win < 2:
        raise ValueError(f"need at least 2 windows of {window_steps} steps, have {s.shape[1]} steps")
    c = s[:, : n_win * window_steps].reshape(s.shape[0], n_win, window_steps, s.shape[2]).sum(2, dtype=np.float64)
    c = c.reshape(-1, s.shape[2])
    mean = c.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mean > 0, c.var(0, ddof=1) / mean, np.nan)


def silent_saturated(rates_hz: np.ndarray, silent_below_hz: float, saturated_above_hz: float) -> tuple[int, int]:
    """Numbers of silent (rate < silent_below_hz) and saturated (rate > saturated_above_hz) neurons."""
    r = np.asarray(rates_hz)
    return int((r < silent_below_hz).sum()), int((r > saturated_above_hz).sum())


def frac_in_band(rates_hz: np.ndarray, low: float, high: float) -> float:
    """Fraction of neurons with low <= rate <= high (Hz); the band is the caller's (the student's config)."""
    r = np.asarray(rates_hz)
    return float(((r >= low) & (r <= high)).mean())


def ei_current_correlation(i_exc: np.ndarray, i_inh: np.ndarray) -> np.ndarray:
    """Per-neuron Pearson correlation over time between excitatory input current and the magnitude of inhibitory input
    current, (neurons,). i_exc, i_inh: (..., steps, neurons) (inhibitory currents negative or positive; the sign is
    dropped). Balanced networks give positive values (inhibition tracks excitation). NaN where either is constant."""
    e = np.asarray(i_exc, np.float64).reshape(-1, np.shape(i_exc)[-1])
    i = np.abs(np.asarray(i_inh, np.float64)).reshape(-1, np.shape(i_inh)[-1])
    e = e - e.mean(0)
    i = i - i.mean(0)
    den = np.sqrt((e * e).sum(0) * (i * i).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (e * i).sum(0) / den, np.nan)
