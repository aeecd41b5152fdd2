"""Behavioural and task labels per time bin, aligned to the same edges as the spike counts.

:func:`bin_labels` returns one row per bin ``[edges[k], edges[k+1])`` (see :mod:`neurojepa.data.binning`).
Which time of the bin a label refers to (decided once, here):

- *instantaneous* labels are taken at the bin's left edge ``t_k = edges[k]``: ``state`` and ``block`` (the epoch
  with ``start <= t_k < stop``; ``""`` / ``-1`` outside all epochs), ``image`` (``image_name`` of the most recent
  shown flash with onset ``<= t_k`` in the same epoch; omitted flashes show nothing, so they do not change it;
  ``""`` if none), ``time_since_flash`` (``t_k`` minus the most recent flash onset ``<= t_k`` in the same epoch,
  omitted flashes included; NaN if none), ``trial_outcome`` (of the trial with ``start <= t_k < stop``);
- *interval* labels use the whole bin: ``is_change`` / ``omitted`` are True when the bin overlaps the 250 ms
  window ``[onset, onset + 0.25 s)`` of a change / omitted flash (so the bin holding the onset and every bin
  within the next 250 ms; the bin holding a mid-bin onset still shows the previous ``image``); ``licks`` counts
  lick times in ``[t_k, t_{k+1})``; ``running`` is the mean running speed (cm/s) of the samples in the bin,
  linearly interpolated at the bin centre when no sample falls in it (NaN beyond the first/last sample and
  without running data); every other sampled behaviour stream (``pupil_area``, position, head direction: anything
  with samples in ``session.behavior``) gets a column of its own, binned the same way.

A *flash* is a row of ``session.stimuli`` with an ``image_name`` (the change-detection images, ``omitted``
rows included); gabor and full-field-flash presentations without an image name are not flashes here.
``trial_outcome`` is ``'hit'``, ``'miss'``, ``'false_alarm'`` or ``'correct_reject'`` (the first True Allen
column in that order), ``''`` outside trials or when none is True (e.g. aborted trials).

Everything is vectorised with ``np.searchsorted``/``np.bincount`` (1e6 bins in well under a second).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .session import Session

FLASH_S = 0.25  # s, how long a VBN image is shown; the window of is_change / omitted
OUTCOMES = ("hit", "miss", "false_alarm", "correct_reject")


def _interval_index(starts: np.ndarray, stops: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Index of the interval (sorted by start, not overlapping) with start <= t < stop, -1 when none."""
    i = np.searchsorted(starts, t, side="right") - 1
    inside = (i >= 0) & (t < stops[np.clip(i, 0, None)]) if len(starts) else np.zeros(len(t), bool)
    return np.where(inside, i, -1)


def _bool_column(df: pd.DataFrame, name: str) -> np.ndarray:
    if name not in df.columns:
        return np.zeros(len(df), dtype=bool)
    return df[name].astype("boolean").fillna(False).to_numpy(dtype=bool)


def _overlaps(edges: np.ndarray, onsets: np.ndarray, duration: float) -> np.ndarray:
    """(n_bins,) bool: the bin overlaps some window [onset, onset + duration)."""
    n_bins = len(edges) - 1
    lo = np.clip(np.searchsorted(edges, onsets, side="right") - 1, 0, None)  # bin holding the onset
    hi = np.searchsorted(edges, onsets + duration, side="left") - 1  # last bin starting before the end
    keep = (hi >= lo) & (lo < n_bins)
    marks = np.zeros(n_bins + 1, dtype=np.int64)
    np.add.at(marks, lo[keep], 1)
    np.add.at(marks, np.minimum(hi[keep], n_bins - 1) + 1, -1)
    return np.cumsum(marks[:-1]) > 0


def _last_before(onsets: np.ndarray, t: np.ndarray, epoch_start: np.ndarray) -> np.ndarray:
    """Index of the last onset <= t that is not before the bin's epoch start, -1 when none."""
    j = np.searchsorted(onsets, t, side="right") - 1
    ok = (j >= 0) & ~np.isnan(epoch_start)
    ok &= onsets[np.clip(j, 0, None)] >= np.where(np.isnan(epoch_start), np.inf, epoch_start) if len(onsets) else False
    return np.where(ok, j, -1)


def _running(session: Session, edges: np.ndarray) -> np.ndarray:
    return _sampled(session.behavior.get("running_speed"), edges)


def _sampled(series, edges: np.ndarray, column: int = 0) -> np.ndarray:
    """(n_bins,) mean of a sampled stream's ``column`` per bin, interpolated at the bin centre in empty bins (NaN
    beyond the first/last sample and without data)."""
    n_bins = len(edges) - 1
    if series is None or series.data is None or len(series.timestamps) == 0:
        return np.full(n_bins, np.nan)
    ts = np.asarray(series.timestamps, dtype=np.float64)
    v = np.asarray(series.data, dtype=np.float64).reshape(len(ts), -1)[:, column]
    good = np.isfinite(ts) & np.isfinite(v)
    ts, v = ts[good], v[good]
    order = np.argsort(ts, kind="stable")
    ts, v = ts[order], v[order]
    k = np.searchsorted(edges, ts, side="right") - 1
    inside = (k >= 0) & (k < n_bins)
    total = np.bincount(k[inside], weights=v[inside], minlength=n_bins)
    count = np.bincount(k[inside], minlength=n_bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    out = np.interp(centres, ts, v, left=np.nan, right=np.nan) if len(ts) else np.full(n_bins, np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return out


# streams with their own label columns (or none: event streams); the other sampled streams become columns below
_OWN_COLUMNS = ("running_speed", "licks", "rewards")
LABEL_COLUMNS = ("time", "state", "block", "image", "is_change", "omitted", "time_since_flash", "running", "licks",
                 "trial_outcome")


def _other_streams(session: Session, edges: np.ndarray) -> dict[str, np.ndarray]:
    """Every other sampled behaviour stream (``pupil_area``, position, head direction, ...), binned like running:
    one column per stream, ``name_i`` per column of a multi-column stream; names clashing with a label are
    prefixed ``behavior_``."""
    out: dict[str, np.ndarray] = {}
    for name, series in sorted(session.behavior.items()):
        if name in _OWN_COLUMNS or series is None or series.data is None or len(series.timestamps) == 0:
            continue
        k = np.asarray(series.data).reshape(len(series.timestamps), -1).shape[1]
        for j in range(k):
            col = name if k == 1 else f"{name}_{j}"
            col = f"behavior_{col}" if col in LABEL_COLUMNS else col
            out[col] = _sampled(series, edges, j)
    return out


def _licks(session: Session, edges: np.ndarray) -> np.ndarray:
    n_bins = len(edges) - 1
    series = session.behavior.get("licks")
    if series is None:
        return np.zeros(n_bins, dtype=np.int64)
    k = np.searchsorted(edges, np.asarray(series.timestamps, dtype=np.float64), side="right") - 1
    return np.bincount(k[(k >= 0) & (k < n_bins)], minlength=n_bins)


def bin_labels(session: Session, edges: np.ndarray) -> pd.DataFrame:
    """Labels (n_bins rows, n_bins = len(edges) - 1) for the bins ``[edges[k], edges[k+1])`` (s).

    Columns: ``time`` (float64 s, bin start), ``state`` (str), ``block`` (int64), ``image`` (str),
    ``is_change`` (bool), ``omitted`` (bool), ``time_since_flash`` (float64 s), ``running`` (float64 cm/s),
    ``licks`` (int64), ``trial_outcome`` (str); then one float64 column per other sampled behaviour stream
    (e.g. ``pupil_area``; see :func:`_other_streams`), binned like ``running``. See the module docstring.
    """
    edges = np.asarray(edges, dtype=np.float64)
    t = edges[:-1]
    n_bins = len(t)

    ep = session.epochs.sort_values("start_time", kind="stable")
    e_start = ep["start_time"].to_numpy(dtype=np.float64)
    e_i = _interval_index(e_start, ep["stop_time"].to_numpy(dtype=np.float64), t)
    inside = e_i >= 0
    state = np.where(inside, ep["state"].to_numpy(dtype=object)[e_i], "")
    blocks = ep["block"].to_numpy(dtype=np.int64) if "block" in ep.columns else np.arange(len(ep), dtype=np.int64)
    block = np.where(inside, blocks[e_i], -1)
    epoch_start = np.where(inside, e_start[e_i], np.nan)

    stim = session.stimuli
    if len(stim) and "image_name" in stim.columns:
        stim = stim[stim["image_name"].notna()].sort_values("start_time", kind="stable")
    else:
        stim = pd.DataFrame({"start_time": np.zeros(0), "image_name": np.zeros(0, dtype=object)})
    onsets = stim["start_time"].to_numpy(dtype=np.float64)
    omitted = _bool_column(stim, "omitted")
    is_change = _bool_column(stim, "is_change")

    last = _last_before(onsets, t, epoch_start)
    # a recording without flashes (e.g. a generic NWB file): no bin has a last flash
    time_since = np.where(last >= 0, t - onsets[np.clip(last, 0, None)], np.nan) if len(onsets) else np.full(n_bins, np.nan)
    shown = ~omitted
    last_shown = _last_before(onsets[shown], t, epoch_start)
    names = stim["image_name"].to_numpy(dtype=object)[shown].astype(str)
    image = np.where(last_shown >= 0, names[np.clip(last_shown, 0, None)] if len(names) else "", "")

    tr = session.trials
    outcome = np.full(n_bins, "", dtype=object)
    if len(tr) and {"start_time", "stop_time"} <= set(tr.columns):
        tr = tr.sort_values("start_time", kind="stable")
        per_trial = np.full(len(tr), "", dtype=object)
        for name in reversed(OUTCOMES):  # reversed: the first True column in OUTCOMES order wins
            per_trial[_bool_column(tr, name)] = name
        t_i = _interval_index(
            tr["start_time"].to_numpy(dtype=np.float64), tr["stop_time"].to_numpy(dtype=np.float64), t
        )
        outcome[t_i >= 0] = per_trial[t_i[t_i >= 0]]

    return pd.DataFrame(
        {
            "time": t,
            "state": state.astype(object),
            "block": block.astype(np.int64),
            "image": image.astype(object),
            "is_change": _overlaps(edges, onsets[is_change], FLASH_S),
            "omitted": _overlaps(edges, onsets[omitted], FLASH_S),
            "time_since_flash": time_since,
            "running": _running(session, edges),
            "licks": _licks(session, edges),
            "trial_outcome": outcome,
            **_other_streams(session, edges),
        }
    )
