"""Data-quality checks run by ``neurojepa prepare`` and reported in ``qc.json["checks"]``.

Each check returns a dict ``{"name", "ok", "detail", ...numbers}``. A failing check is a warning in the report,
not an error: real recordings have silent stretches and the odd duplicate spike, and the user decides. The checks:

- ``spike_times_sorted_finite``: every kept unit's spike times are finite and non-decreasing (read in unit
  batches over the whole recording, so memory stays at one batch of trains);
- ``duplicate_spikes``: spikes of one unit at exactly the same time (double-counted by the sorter/exporter);
- ``population_silent_gaps``: runs of bins with no spike from any kept unit longer than ``silent_gap_s``
  (a probe dropout or a cut in the recording looks like this);
- ``block_timing``: epochs have positive durations and do not overlap; stimulus presentations fall in an epoch;
- ``physiological_rates``: kept units whose mean rate over the prepared bins is outside
  ``[min_rate_hz, max_rate_hz]`` (default 0.01-200 Hz).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd


@dataclass
class CheckConfig:
    silent_gap_s: float = 1.0  # report population-silent runs at least this long (s)
    min_rate_hz: float = 0.01  # mean rates below this over the prepared bins are flagged (Hz)
    max_rate_hz: float = 200.0  # ... and above this (Hz): beyond what a single neuron sustains
    unit_batch: int = 64  # units read at once for the spike-time checks


def _result(name: str, ok: bool, detail: str, **numbers) -> dict:
    return {"name": name, "ok": bool(ok), "detail": detail, **numbers}


def _first(ids: Sequence[int], n: int = 10) -> list[int]:
    return [int(u) for u in list(ids)[:n]]


def check_spike_times(session, unit_ids: np.ndarray, batch: int = 64) -> list[dict]:
    """Finite/sorted and duplicate-spike checks over the whole recording of ``unit_ids``."""
    bad_finite, bad_sorted, dup_units, n_dup = [], [], [], 0
    for i in range(0, len(unit_ids), max(1, batch)):
        trains = session.spike_times(unit_ids[i : i + batch])
        for j, u in enumerate(trains.unit_ids):
            t = trains[j]
            if not np.isfinite(t).all():
                bad_finite.append(int(u))
                t = t[np.isfinite(t)]
            d = np.diff(t)
            if (d < 0).any():
                bad_sorted.append(int(u))
                d = np.diff(np.sort(t))
            k = int((d == 0).sum())
            if k:
                dup_units.append(int(u))
                n_dup += k
    ok = not bad_finite and not bad_sorted
    detail = ("all spike times finite and sorted" if ok else
              f"{len(bad_finite)} units with non-finite and {len(bad_sorted)} with unsorted spike times")
    return [
        _result("spike_times_sorted_finite", ok, detail, units_nonfinite=_first(bad_finite),
                units_unsorted=_first(bad_sorted), n_units_bad=len(set(bad_finite) | set(bad_sorted))),
        _result("duplicate_spikes", n_dup == 0,
                "no duplicate spikes" if n_dup == 0 else f"{n_dup} duplicate spikes in {len(dup_units)} units",
                n_duplicates=n_dup, units=_first(dup_units)),
    ]


def silent_runs(active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[start, stop) index runs where ``active`` (bool, (n,)) is False."""
    x = np.concatenate([[1], np.asarray(active, dtype=np.int8), [1]])
    d = np.diff(x)
    return np.flatnonzero(d == -1), np.flatnonzero(d == 1)


def check_silent_gaps(pop_counts: np.ndarray, bin_t0: np.ndarray, bin_size: float, min_gap_s: float) -> dict:
    """Runs of bins with zero population count lasting at least ``min_gap_s`` (s).

    pop_counts: (n_bins,) spikes of all kept units per bin; bin_t0: (n_bins,) left edges (s).
    """
    start, stop = silent_runs(np.asarray(pop_counts) > 0)
    length = (stop - start) * bin_size
    long = length >= min_gap_s - 1e-9
    gaps = [{"t_start": float(bin_t0[a]), "duration_s": float(n)} for a, n in zip(start[long], length[long])]
    gaps.sort(key=lambda g: -g["duration_s"])
    total = float(length[long].sum())
    return _result("population_silent_gaps", not gaps,
                   "no population-silent gap" if not gaps else
                   f"{len(gaps)} gaps >= {min_gap_s:g} s without any spike ({total:.1f} s in all)",
                   n_gaps=len(gaps), total_s=total, longest=gaps[:5])


def check_block_timing(epochs: pd.DataFrame, stimuli: pd.DataFrame | None = None) -> dict:
    """Epochs with non-positive duration or overlapping the next one; presentations outside every epoch."""
    ep = epochs.sort_values("start_time")
    start, stop = ep["start_time"].to_numpy(float), ep["stop_time"].to_numpy(float)
    nonpos = int((stop <= start).sum())
    overlaps = int((start[1:] < stop[:-1] - 1e-9).sum()) if len(ep) > 1 else 0
    outside = 0
    if stimuli is not None and len(stimuli) and "start_time" in stimuli:
        t = stimuli["start_time"].to_numpy(float)
        inside = np.zeros(len(t), dtype=bool)
        for a, b in zip(start, stop):
            inside |= (t >= a) & (t < b)
        outside = int((~inside).sum())
    blocks = [{"state": str(r.state), "t_start": float(r.start_time), "t_stop": float(r.stop_time),
               "duration_s": float(r.stop_time - r.start_time)} for r in ep.itertuples(index=False)]
    ok = nonpos == 0 and overlaps == 0 and outside == 0
    detail = (f"{len(ep)} epochs, consistent" if ok else
              f"{nonpos} epochs with non-positive duration, {overlaps} overlaps, "
              f"{outside} stimulus presentations outside every epoch")
    return _result("block_timing", ok, detail, n_nonpositive=nonpos, n_overlaps=overlaps,
                   n_presentations_outside=outside, blocks=blocks)


def check_rates(rates_hz: pd.Series, lo: float, hi: float) -> dict:
    """Units whose mean rate (Hz, indexed by unit_id) is outside ``[lo, hi]``."""
    low, high = rates_hz[rates_hz < lo], rates_hz[rates_hz > hi]
    ok = low.empty and high.empty
    return _result("physiological_rates", ok,
                   f"all kept units between {lo:g} and {hi:g} Hz" if ok else
                   f"{len(low)} units below {lo:g} Hz, {len(high)} above {hi:g} Hz",
                   units_low=_first(low.index), units_high=_first(high.index),
                   median_hz=float(rates_hz.median()) if len(rates_hz) else float("nan"))
