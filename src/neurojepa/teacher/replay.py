"""Replay pairing: the passive block shows the active block's stimulus sequence again, flash for flash.

In VBN (and in the simulator, docs/simulator.md) the passive block replays the active block's image/omission
sequence. A window of the active block and the window at the *paired* time of the passive block therefore show
the same stimulus-driven latents through two different population codes: a cross-state "view" for the teacher
(the replay term of the loss, teacher/module.py).

Pairing, in three pure steps:

1. :func:`flash_sequence`: flash onsets (s) and ids of one state from the per-bin labels; the onset bin is the
   first bin whose left edge is at or after the onset (``metrics.decoding.flash_onsets``), the exact onset time
   ``t_bin - time_since_flash``, the id the image that bin shows (data/labels.py), or ``"omitted"``.
2. :func:`pair_flashes`: the two sequences must agree, in order, on >= ``min_agreement`` of their flashes and have
   nearly the same length; otherwise there is no replay (``None``, a logged warning). Agreeing flashes are the
   anchors.
3. :func:`map_times`: a time in the active block -> the paired passive time by linear interpolation between the
   anchors (``np.interp``); NaN outside the anchored range.

:func:`replay_partners` applies this to window starts: a window's partner is the window starting at the mapped
bin, kept only when it lies wholly inside one of the allowed (train) segments, so no pair reaches test data.

Real recordings without a replay block (or any session whose sequences disagree) get no pairing: training runs
without the replay term.
"""

from __future__ import annotations

import logging

import numpy as np

from ..metrics.decoding import flash_onsets

log = logging.getLogger(__name__)


def flash_sequence(labels, state: str, bin_size: float, t_start: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Flash onsets and ids of the bins of ``state``.

    labels: per-bin DataFrame with ``state``, ``time_since_flash`` (s, NaN before the first flash), ``image`` and
    optionally ``omitted``; bin k starts at ``t_start + k * bin_size`` (s). Returns (onsets (n,) float64 s,
    ids (n,) str)."""
    st = labels["state"].to_numpy().astype(str)
    tsf = labels["time_since_flash"].to_numpy(dtype=np.float64)
    image = labels["image"].to_numpy().astype(str)
    omitted = labels["omitted"].to_numpy(dtype=bool) if "omitted" in labels else np.zeros(len(st), bool)
    bins = flash_onsets(tsf, bin_size)  # the same onsets the decoding metrics use
    bins = bins[st[bins] == state]
    onsets = t_start + bins * bin_size - tsf[bins]
    ids = np.where(omitted[bins], "omitted", image[bins])
    return onsets, ids


def pair_flashes(onsets_a: np.ndarray, ids_a: np.ndarray, onsets_p: np.ndarray, ids_p: np.ndarray,
                 min_agreement: float = 0.95) -> tuple[np.ndarray, np.ndarray] | None:
    """Anchor pairs (onsets_a, onsets_p) of two flash sequences that replay each other, or None.

    The sequences are compared flash by flash in order; they pair when the shorter is >= min_agreement of the
    longer and >= min_agreement of the compared flashes have the same id. Only agreeing flashes become anchors."""
    n = min(len(ids_a), len(ids_p))
    if n < 2 or n < min_agreement * max(len(ids_a), len(ids_p)):
        log.warning("replay: flash sequences of different length (%d vs %d): no replay pairing",
                    len(ids_a), len(ids_p))
        return None
    same = np.asarray(ids_a[:n]) == np.asarray(ids_p[:n])
    if same.mean() < min_agreement:
        log.warning("replay: only %.0f %% of flashes agree in order (< %.0f %%): no replay pairing",
                    100 * same.mean(), 100 * min_agreement)
        return None
    a, p = np.asarray(onsets_a[:n])[same], np.asarray(onsets_p[:n])[same]
    if np.any(np.diff(a) <= 0) or np.any(np.diff(p) <= 0):
        log.warning("replay: flash onsets are not increasing: no replay pairing")
        return None
    return a, p


def map_times(t: np.ndarray, anchors_a: np.ndarray, anchors_p: np.ndarray) -> np.ndarray:
    """Active-block times (s) -> paired passive times (s), linear between anchors; NaN outside them."""
    return np.interp(np.asarray(t, dtype=np.float64), anchors_a, anchors_p, left=np.nan, right=np.nan)


def replay_partners(labels, bin_size: float, t_start: float, starts: np.ndarray, length: int,
                    allowed_segments: list[tuple[int, int]], source: str = "active", target: str = "passive",
                    min_agreement: float = 0.95) -> np.ndarray | None:
    """Partner window start (bin) of each window start in ``starts`` (bins, all in state ``source``), -1 when the
    partner does not lie wholly inside one of ``allowed_segments`` ([a, b) bins); None when the session has no
    replay (missing labels or disagreeing sequences; logged)."""
    if labels is None or not {"state", "time_since_flash", "image"} <= set(labels.columns):
        return None
    pairs = pair_flashes(*flash_sequence(labels, source, bin_size, t_start),
                         *flash_sequence(labels, target, bin_size, t_start), min_agreement=min_agreement)
    if pairs is None:
        return None
    # bins of the window start times; rounding to the nearest bin keeps the pair aligned to within 5 ms
    mapped = map_times(t_start + np.asarray(starts) * bin_size, *pairs)
    out = np.full(len(starts), -1, dtype=np.int64)
    ok = np.isfinite(mapped)
    cand = np.rint((mapped[ok] - t_start) / bin_size).astype(np.int64)
    seg = np.asarray(allowed_segments, dtype=np.int64).reshape(-1, 2)
    seg = seg[np.argsort(seg[:, 0])]
    j = np.searchsorted(seg[:, 0], cand, side="right") - 1  # the segment starting at or before the partner
    inside = (j >= 0) & (cand + length <= seg[np.clip(j, 0, None), 1])
    out[np.flatnonzero(ok)[inside]] = cand[inside]
    return out
