"""The one representation of a recording that every phase speaks.

A :class:`Session` is a set of small, eagerly loaded tables (units, epochs, stimulus presentations, trials,
behaviour) plus two lazy parts that can be large: the spike times (:class:`SpikeSource`) and the simulator's
ground truth (:class:`GroundTruth`). Opening a 3 GB NWB file therefore reads a few megabytes; spike times are
read only when :meth:`Session.spike_times` asks for them, and only for the units and time range asked.

Conventions (used everywhere in neurojepa):

- times are float64 seconds on the recording's clock;
- ``units`` is a DataFrame indexed by ``unit_id`` (int64) with at least ``area`` (str, ``"unknown"`` when the
  file does not say) and ``cell_type`` (``"fs"`` fast-spiking/putative inhibitory, ``"rs"`` regular-spiking,
  ``"unknown"``); quality-metric columns keep their Allen names (``isi_violations``, ``amplitude_cutoff``,
  ``presence_ratio``, ``firing_rate``, ``quality``, ``snr``, ...) and are simply absent when the file lacks them;
- ``epochs`` is the state timeline: one row per block with ``start_time``, ``stop_time``, ``state``
  (``"active"``, ``"passive"``, or a stimulus name such as ``"gray"``, ``"gabor"``, ``"flash"``,
  ``"spontaneous"``; ``"all"`` for a recording without states), ``block`` (int) and ``stimulus_name``;
- ``stimuli`` has one row per presentation sorted by ``start_time`` with ``stop_time``, ``stimulus_block``,
  ``stimulus_name``, ``image_name``, ``is_change``, ``omitted``, ``active`` (columns a file lacks are absent);
- ``trials`` has the Allen trials columns (``start_time``, ``stop_time``, ``go``, ``catch``, ``hit``, ``miss``,
  ``false_alarm``, ``correct_reject``, ``response_time``, ...);
- ``behavior`` maps a stream name to a :class:`BehaviorSeries`: ``running_speed`` (cm/s), ``licks`` and
  ``rewards`` (event times; ``data`` is None), ``pupil_area`` when present.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import pandas as pd

BIN_SIZE = 0.01  # s: the default bin width of binned counts (prepare, arrays handed in, the binning kernels)
STATE_ACTIVE = "active"
STATE_PASSIVE = "passive"
STATE_ALL = "all"


@dataclass(frozen=True)
class SpikeTrains:
    """Spike times of several units as one ragged array (the layout of NWB's ``spike_times`` column).

    unit_ids: (n_units,) int64
    times:    (n_spikes,) float64 seconds, sorted within each unit
    offsets:  (n_units + 1,) int64; unit ``i`` owns ``times[offsets[i]:offsets[i + 1]]``
    """

    unit_ids: np.ndarray
    times: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        if len(self.offsets) != len(self.unit_ids) + 1:
            raise ValueError("offsets must have one entry more than unit_ids")
        if len(self.offsets) and (self.offsets[0] != 0 or self.offsets[-1] != len(self.times)):
            raise ValueError("offsets must start at 0 and end at len(times)")

    @classmethod
    def from_list(cls, unit_ids: Sequence[int], trains: Sequence[np.ndarray]) -> "SpikeTrains":
        """Build from one array of spike times per unit."""
        lengths = np.array([len(t) for t in trains], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        times = np.concatenate([np.asarray(t, dtype=np.float64) for t in trains]) if len(trains) else np.zeros(0)
        return cls(np.asarray(unit_ids, dtype=np.int64), times.astype(np.float64, copy=False), offsets)

    def __len__(self) -> int:
        return len(self.unit_ids)

    def __getitem__(self, i: int) -> np.ndarray:
        """Spike times (s) of the i-th unit (by position, not by id)."""
        return self.times[self.offsets[i] : self.offsets[i + 1]]

    @property
    def n_spikes(self) -> np.ndarray:
        """(n_units,) int64 spike count per unit."""
        return np.diff(self.offsets)

    def unit_index(self) -> np.ndarray:
        """(n_spikes,) int64: the position of the unit each spike belongs to."""
        return np.repeat(np.arange(len(self.unit_ids), dtype=np.int64), self.n_spikes)


@runtime_checkable
class SpikeSource(Protocol):
    """Where spike times come from: memory, or an open NWB file read lazily."""

    unit_ids: np.ndarray  # (n_units,) int64, the order of the file

    def spike_counts(self) -> np.ndarray:
        """(n_units,) total spikes per unit, without reading spike times."""

    def read(
        self, unit_ids: Sequence[int] | None = None, t_start: float | None = None, t_stop: float | None = None
    ) -> SpikeTrains:
        """Spike times of ``unit_ids`` (all when None, in the given order) with ``t_start <= t < t_stop``."""


class InMemorySpikes:
    """A :class:`SpikeSource` over a :class:`SpikeTrains` already in memory."""

    def __init__(self, trains: SpikeTrains):
        self.trains = trains
        self.unit_ids = trains.unit_ids
        self._pos = {int(u): i for i, u in enumerate(trains.unit_ids)}

    def spike_counts(self) -> np.ndarray:
        return self.trains.n_spikes

    def read(self, unit_ids=None, t_start=None, t_stop=None) -> SpikeTrains:
        ids = self.unit_ids if unit_ids is None else np.asarray(unit_ids, dtype=np.int64)
        out = []
        for u in ids:
            if int(u) not in self._pos:
                raise KeyError(f"unit {int(u)} is not in this session")
            out.append(restrict(self.trains[self._pos[int(u)]], t_start, t_stop))
        return SpikeTrains.from_list(ids, out)


def restrict(times: np.ndarray, t_start: float | None, t_stop: float | None) -> np.ndarray:
    """The part of one sorted spike train with ``t_start <= t < t_stop`` (a view, no copy)."""
    lo = 0 if t_start is None else np.searchsorted(times, t_start, side="left")
    hi = len(times) if t_stop is None else np.searchsorted(times, t_stop, side="left")
    return times[lo:hi]


@dataclass
class BehaviorSeries:
    """A behavioural stream: samples (``data`` not None) or events (``data`` None).

    timestamps: (n,) float64 seconds; data: (n,) or (n, k) float64 in the stream's unit.
    """

    timestamps: np.ndarray
    data: np.ndarray | None = None
    unit: str = ""

    @property
    def is_events(self) -> bool:
        return self.data is None


class GroundTruth:
    """The simulator's hidden variables, read lazily (the latents of a full-size session are ~30 MB).

    Attributes that are always loaded: ``latent_dt`` (s), ``latent_t0`` (s), ``n_latents``, ``unit_ids``.
    Arrays loaded on first use: ``latents`` (T, D) float32 sampled at ``latent_t0 + k * latent_dt``;
    ``loadings`` (n_units, D) float32, ``baseline_hz`` (n_units,), ``state_gain`` and ``state_offset``
    ({state: (n_units,)}) and ``state_remix`` ({state: (n_units, D)}) describe the population code,
    see :mod:`neurojepa.synthetic.simulate` for the rate equation.
    """

    def __init__(self, loader, *, latent_dt: float, latent_t0: float, n_latents: int, unit_ids: np.ndarray):
        self._loader = loader  # callable(name) -> array or dict of arrays
        self._cache: dict[str, object] = {}
        self.latent_dt = float(latent_dt)
        self.latent_t0 = float(latent_t0)
        self.n_latents = int(n_latents)
        self.unit_ids = np.asarray(unit_ids, dtype=np.int64)

    def _get(self, name: str):
        if name not in self._cache:
            self._cache[name] = self._loader(name)
        return self._cache[name]

    latents = property(lambda self: self._get("latents"))
    loadings = property(lambda self: self._get("loadings"))
    baseline_hz = property(lambda self: self._get("baseline_hz"))
    state_gain = property(lambda self: self._get("state_gain"))
    state_offset = property(lambda self: self._get("state_offset"))
    state_remix = property(lambda self: self._get("state_remix"))

    def latents_at(self, times: np.ndarray) -> np.ndarray:
        """(len(times), D) latents at the given times (s): the sample whose interval contains each time."""
        z = self.latents
        k = np.floor((np.asarray(times, dtype=np.float64) - self.latent_t0) / self.latent_dt).astype(np.int64)
        return z[np.clip(k, 0, len(z) - 1)]


@dataclass
class Session:
    """One recording: tables eagerly, spikes and ground truth lazily. See the module docstring for columns."""

    session_id: str
    units: pd.DataFrame
    spikes: SpikeSource
    epochs: pd.DataFrame
    stimuli: pd.DataFrame = field(default_factory=pd.DataFrame)
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)
    behavior: dict[str, BehaviorSeries] = field(default_factory=dict)
    ground_truth: GroundTruth | None = None
    source: Path | None = None
    metadata: dict = field(default_factory=dict)

    # -- file handle ------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the file behind the lazy parts (a no-op for in-memory sessions)."""
        close = getattr(self.spikes, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- spikes -----------------------------------------------------------------------------------------------
    def spike_times(
        self, units: Sequence[int] | None = None, t_start: float | None = None, t_stop: float | None = None
    ) -> SpikeTrains:
        """Spike times (s) of ``units`` (ids; all when None) in ``[t_start, t_stop)``, read on demand."""
        return self.spikes.read(units, t_start, t_stop)

    @property
    def n_units(self) -> int:
        return len(self.units)

    def spike_counts(self) -> pd.Series:
        """Total spikes per unit (indexed by unit_id), from the index alone."""
        return pd.Series(self.spikes.spike_counts(), index=pd.Index(self.spikes.unit_ids, name="unit_id"))

    # -- time ---------------------------------------------------------------------------------------------------
    @property
    def t_start(self) -> float:
        return float(self.epochs["start_time"].min())

    @property
    def t_stop(self) -> float:
        return float(self.epochs["stop_time"].max())

    @property
    def states(self) -> list[str]:
        """State names in order of first appearance."""
        return list(dict.fromkeys(self.epochs["state"].tolist()))

    def state_at(self, times: np.ndarray) -> np.ndarray:
        """(len(times),) object array: the state of the epoch containing each time, ``""`` outside all epochs."""
        times = np.asarray(times, dtype=np.float64)
        out = np.full(times.shape, "", dtype=object)
        for row in self.epochs.itertuples(index=False):
            out[(times >= row.start_time) & (times < row.stop_time)] = row.state
        return out

    def state_durations(self) -> dict[str, float]:
        """Total seconds spent in each state."""
        dur = (self.epochs["stop_time"] - self.epochs["start_time"]).groupby(self.epochs["state"], sort=False).sum()
        return {str(k): float(v) for k, v in dur.items()}
