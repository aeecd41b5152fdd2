"""Unit quality control: which sorted units are clean enough to model.

Defaults follow the filters used in the Allen VBN notebooks (RESEARCH.md §1) plus a minimum rate:
``quality == 'good'`` (when the column exists), ``isi_violations < 0.5``, ``amplitude_cutoff < 0.1``,
``presence_ratio > 0.9``, ``firing_rate > 0.1`` Hz. Optional: a list of areas, a maximum rate, a minimum snr.

Rules (decisions, so the filter list stays honest):

- Filters run in this fixed order and a dropped unit is counted under its FIRST failing filter:
  ``area``, ``quality``, ``isi_violations``, ``amplitude_cutoff``, ``presence_ratio``, ``snr``,
  ``firing_rate`` (min), ``firing_rate`` (max). Area first because it is a choice of population, not a quality
  judgement; the rate last because it is the only one that can be computed from the spikes.
- A filter whose column is absent is skipped and listed in ``filters_not_applied`` (e.g. every metric filter on a
  phy export without metrics). A unit with NaN/None in a present column is dropped with reason ``missing <column>``.
- ``firing_rate`` absent: with ``rate_from_spikes`` (default) the rate is computed as total spikes / recording
  duration (s) from the spike index (no spike times read), the rate filters are applied to it and listed in
  ``filters_computed``; with ``rate_from_spikes=False`` they are listed as not applied.
- No unit left is an :class:`~neurojepa.errors.InputError` naming the filters that removed the units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

from ..errors import InputError


@dataclass
class QCConfig:
    """Unit filters; set a threshold to null (``~`` in YAML, ``key=null`` on the command line) to switch it off."""

    quality: Optional[str] = "good"  # keep units whose `quality` equals this
    isi_violations_max: Optional[float] = 0.5  # keep isi_violations < this (Hill et al. contamination rate)
    amplitude_cutoff_max: Optional[float] = 0.1  # keep amplitude_cutoff < this (fraction of missed spikes)
    presence_ratio_min: Optional[float] = 0.9  # keep presence_ratio > this
    min_rate_hz: Optional[float] = 0.1  # keep firing_rate > this (Hz)
    max_rate_hz: Optional[float] = None  # keep firing_rate < this (Hz)
    min_snr: Optional[float] = None  # keep snr > this
    areas: Optional[list[str]] = None  # keep only these areas (the `area` column)
    rate_from_spikes: bool = True  # no `firing_rate` column: compute it as spikes / duration


@dataclass
class QCResult:
    """Outcome of :func:`select_units`.

    kept: (n_kept,) int64 unit ids in the order of the units table; reasons: Series indexed by unit_id, ``""`` for
    kept units, else the first failing filter; rates_hz: Series (Hz) indexed by unit_id, the rate the filters saw
    (NaN when unknown).
    """

    kept: np.ndarray
    reasons: pd.Series
    rates_hz: pd.Series
    dropped: dict[str, int]
    filters_applied: list[str]
    filters_not_applied: list[str]
    filters_computed: dict[str, str] = field(default_factory=dict)

    @property
    def units_total(self) -> int:
        return len(self.reasons)


def _filters(cfg: QCConfig) -> list[tuple[str, str, callable]]:
    """(name shown to the user, column, keep-predicate on a float/str Series) in the documented order."""
    out: list[tuple[str, str, callable]] = []
    if cfg.areas is not None:
        areas = list(cfg.areas)
        out.append((f"area in {areas}", "area", lambda s: s.isin(areas)))
    if cfg.quality is not None:
        out.append((f"quality == '{cfg.quality}'", "quality", lambda s: s == cfg.quality))
    if cfg.isi_violations_max is not None:
        out.append((f"isi_violations < {cfg.isi_violations_max:g}", "isi_violations",
                    lambda s: s < cfg.isi_violations_max))
    if cfg.amplitude_cutoff_max is not None:
        out.append((f"amplitude_cutoff < {cfg.amplitude_cutoff_max:g}", "amplitude_cutoff",
                    lambda s: s < cfg.amplitude_cutoff_max))
    if cfg.presence_ratio_min is not None:
        out.append((f"presence_ratio > {cfg.presence_ratio_min:g}", "presence_ratio",
                    lambda s: s > cfg.presence_ratio_min))
    if cfg.min_snr is not None:
        out.append((f"snr > {cfg.min_snr:g}", "snr", lambda s: s > cfg.min_snr))
    if cfg.min_rate_hz is not None:
        out.append((f"firing_rate > {cfg.min_rate_hz:g}", "firing_rate", lambda s: s > cfg.min_rate_hz))
    if cfg.max_rate_hz is not None:
        out.append((f"firing_rate < {cfg.max_rate_hz:g}", "firing_rate", lambda s: s < cfg.max_rate_hz))
    return out


def select_units(
    units: pd.DataFrame,
    cfg: QCConfig,
    spike_counts: pd.Series | None = None,
    duration_s: float | None = None,
) -> QCResult:
    """Apply the QC filters to a units table (indexed by unit_id).

    spike_counts: total spikes per unit (indexed by unit_id), used for the rate when ``firing_rate`` is absent;
    duration_s: the recording duration (s) for that rate. Raises InputError when no unit is left.
    """
    table = units.copy()
    computed: dict[str, str] = {}
    if "firing_rate" in table.columns:
        rates = pd.to_numeric(table["firing_rate"], errors="coerce").astype(float)
    elif cfg.rate_from_spikes and spike_counts is not None and duration_s and duration_s > 0:
        rates = spike_counts.reindex(table.index).astype(float) / float(duration_s)
        table["firing_rate"] = rates
        computed["firing_rate"] = f"total spikes / recording duration ({duration_s:.1f} s)"
    else:
        rates = pd.Series(np.nan, index=table.index, dtype=float)

    reasons = pd.Series("", index=table.index, dtype=object)
    applied, not_applied, order = [], [], []
    for name, column, keep in _filters(cfg):
        if column not in table.columns:
            not_applied.append(name)
            continue
        applied.append(name)
        order += [f"missing {column}", name]
        alive = reasons == ""
        col = table[column] if column in ("area", "quality") else pd.to_numeric(table[column], errors="coerce")
        missing = col.isna()
        reasons[alive & missing] = f"missing {column}"
        # NaN comparisons are False, but missing units are already marked, so `~keep` only adds real failures
        reasons[(reasons == "") & ~missing & ~keep(col).fillna(False).astype(bool)] = name

    kept_mask = (reasons == "").to_numpy()
    counts = reasons[~kept_mask].value_counts()
    dropped = {r: int(counts[r]) for r in dict.fromkeys(order) if r in counts.index}  # in filter order
    if not kept_mask.any():
        detail = "; ".join(f"{n} by {r}" for r, n in dropped.items()) or "the units table is empty"
        raise InputError("qc", f"no unit left after QC ({len(table)} units: {detail})")
    return QCResult(
        kept=table.index.to_numpy(dtype=np.int64)[kept_mask],
        reasons=reasons,
        rates_hz=rates,
        dropped=dropped,
        filters_applied=applied,
        filters_not_applied=not_applied,
        filters_computed=computed,
    )
