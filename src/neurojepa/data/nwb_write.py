"""Write a :class:`~neurojepa.data.session.Session` as a VBN-layout NWB file (pynwb), so one reader serves both.

Layout (what :func:`neurojepa.data.nwb_read.open_session` reads back):

- ``/general/extracellular_ephys/electrodes``: one row per peak channel, ``location`` = brain area, one
  ElectrodeGroup per probe (the units' ``probe`` column when present, else one probe per area);
- ``/units``: ids = unit ids, ``peak_channel_id`` into the electrodes table, every other scalar column of
  ``session.units`` (quality metrics, ``cell_type``) except ``area`` (it lives on the electrodes), and the
  ragged ``spike_times`` (float64 s, HDF5-chunked);
- ``/intervals/<stimulus_name>_presentations``: one TimeIntervals per stimulus name with all presentation
  columns (row ids = the row's position in ``session.stimuli``); ``/intervals/trials``; ``/intervals/epochs``
  with the state timeline (``tags`` = [state], plus ``state``, ``block``, ``stimulus_name``), so that generic
  tools and ``--states-from epochs:state`` see the states too (``session.metadata["epochs_table"] = NAME`` writes
  it as ``/intervals/NAME`` instead, as a generic recording's state table);
- ``processing/running/speed``, ``processing/licking/licks``, ``processing/rewards/volume``,
  ``acquisition/EyeTracking/pupil_area``, other behaviour streams in ``processing/behavior/<name>``;
- ``processing/ground_truth`` when ``session.ground_truth`` is set: TimeSeries ``latents`` (T, D) with
  ``starting_time`` = latent_t0 and ``rate`` = 1/latent_dt, and DynamicTable ``unit_parameters`` (ids = unit ids)
  with ``baseline_hz``, ``loadings`` (n_units, D), and per state ``state_gain_<state>``, ``state_offset_<state>``,
  ``state_remix_<state>`` (n_units, D).

Bounded memory: spike times are streamed unit by unit from ``session.spikes.read([uid])`` through an hdmf
:class:`AbstractDataChunkIterator` into a preallocated chunked dataset whose size comes from
``session.spikes.spike_counts()``, so a ~1e8-spike session never sits in memory as one array. Spike times are not
compressed (float64 spike times barely compress, and gzip would dominate the write time).

The file is written under a temporary name and renamed only when complete (:func:`~neurojepa.errors.atomic_path`).
Note for the VBN reader: states are derived from ``stimulus_block`` of the presentations, so every block of
``session.epochs`` should have presentation rows (a gray block: one ``spontaneous`` row spanning it).
"""

from __future__ import annotations

import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from hdmf.backends.hdf5 import H5DataIO
from hdmf.common import DynamicTable, ElementIdentifiers, VectorData, VectorIndex
from hdmf.data_utils import AbstractDataChunkIterator, DataChunk
from pynwb import NWBHDF5IO, NWBFile, ProcessingModule, TimeSeries
from pynwb.behavior import EyeTracking, SpatialSeries
from pynwb.epoch import TimeIntervals
from pynwb.misc import Units

from ..errors import atomic_path
from .nwb_read import GROUND_TRUTH
from .session import BehaviorSeries, Session

SPIKE_CHUNK = 1 << 16  # float64 values per HDF5 chunk of spike_times (512 KB)
_UNITS_RESERVED = {"spike_times", "obs_intervals", "electrodes", "electrode_group", "waveform_mean", "waveform_sd",
                   "waveforms", "area", "peak_channel_id"}
_DEFAULT_START = datetime(2000, 1, 1, tzinfo=timezone.utc)  # fixed, so that files are reproducible


class _SpikeStream(AbstractDataChunkIterator):
    """Yields each unit's spike times as one chunk of the flat ``spike_times`` dataset."""

    def __init__(self, session: Session, unit_ids: np.ndarray, counts: np.ndarray):
        self._session, self._ids, self._counts = session, unit_ids, counts
        self._total = int(counts.sum())
        self._i = 0
        self._pos = 0

    def __iter__(self):
        return self

    def __next__(self) -> DataChunk:
        while self._i < len(self._ids):
            i = self._i
            self._i += 1
            if self._counts[i] == 0:
                continue
            t = np.asarray(self._session.spikes.read([self._ids[i]]).times, dtype=np.float64)
            if len(t) != self._counts[i]:
                raise ValueError(f"unit {self._ids[i]}: read {len(t)} spikes but spike_counts() says {self._counts[i]}")
            sel = np.s_[self._pos : self._pos + len(t)]
            self._pos += len(t)
            return DataChunk(data=t, selection=sel)
        raise StopIteration

    next = __next__

    def recommended_chunk_shape(self):
        return (min(self._total, SPIKE_CHUNK),)

    def recommended_data_shape(self):
        return (self._total,)

    @property
    def dtype(self):
        return np.dtype(np.float64)

    @property
    def maxshape(self):
        return (self._total,)


# ------------------------------------------------------------------------------------------------ columns
def _column_values(values: pd.Series):
    """(kind, data): kind 'plain' with a numpy array / list of str, 'ragged' with a list of lists, or None to skip."""
    v = values.to_numpy()
    if v.dtype.kind in "biuf":
        return "plain", v
    if v.dtype.kind == "O" or pd.api.types.is_string_dtype(values):
        items = list(v)
        if all(isinstance(x, (bool, np.bool_)) for x in items) and items:
            return "plain", np.asarray(items, dtype=bool)
        if all(isinstance(x, (list, tuple, np.ndarray)) for x in items) and items:
            if all(np.ndim(x) == 1 for x in items):
                return "ragged", [list(x) for x in items]
            return None  # rows of 2-d arrays: not a presentation/trial/unit property we carry
        if any(isinstance(x, (list, tuple, np.ndarray)) for x in items):
            return None  # mixed lists and scalars: no faithful NWB column
        return "plain", [("" if (x is None or (isinstance(x, float) and np.isnan(x))) else str(x)) for x in items]
    return None


def _table_columns(df: pd.DataFrame, skip=(), descriptions: dict | None = None) -> list[VectorData]:
    """VectorData (and VectorIndex for list columns, placed before their target) for each usable column."""
    cols: list[VectorData] = []
    for name in df.columns:
        if name in skip:
            continue
        kv = _column_values(df[name])
        if kv is None:
            continue
        kind, data = kv
        desc = (descriptions or {}).get(name, name)
        if kind == "ragged":
            flat = [x for row in data for x in row]
            if flat and all(isinstance(x, str) for x in flat):
                flat_data = flat
            else:
                flat_data = np.asarray(flat, dtype=np.float64)
            target = VectorData(name=name, description=desc, data=flat_data)
            ends = np.cumsum([len(r) for r in data]).astype(np.int64)
            cols += [VectorIndex(name=f"{name}_index", data=ends, target=target), target]
        else:
            cols.append(VectorData(name=name, description=desc, data=data))
    return cols


def _intervals(name: str, description: str, df: pd.DataFrame, ids: np.ndarray) -> TimeIntervals:
    df = df.dropna(axis=1, how="all")
    front = [c for c in ("start_time", "stop_time") if c in df]
    df = df[front + [c for c in df.columns if c not in front]]
    return TimeIntervals(name=name, description=description, id=ElementIdentifiers(name="id", data=ids),
                         columns=_table_columns(df, skip=("id",)))


def _safe_name(s: str) -> str:
    return str(s).replace("/", "_").replace(":", "_")


# ------------------------------------------------------------------------------------------------ parts
def _add_units(nwb: NWBFile, session: Session) -> None:
    units = session.units
    ids = np.asarray(session.spikes.unit_ids, dtype=np.int64)
    if not np.array_equal(np.sort(ids), np.sort(units.index.to_numpy(np.int64))):
        raise ValueError("session.units and session.spikes have different unit ids")
    units = units.loc[ids]
    area = units["area"].astype(str).to_numpy() if "area" in units else np.full(len(units), "unknown", dtype=object)
    probe = units["probe"].astype(str).to_numpy() if "probe" in units else np.array([f"probe_{a}" for a in area])
    # one electrode per peak channel; reuse the session's channel ids when each maps to one area, else number them
    chan = units["peak_channel_id"].to_numpy(np.int64) if "peak_channel_id" in units else None
    if chan is None or pd.DataFrame({"c": chan, "a": area}).groupby("c")["a"].nunique().max() > 1:
        chan = np.arange(len(units), dtype=np.int64)
    device = nwb.create_device(name="neuropixels", description="simulated or exported probes")
    groups = {p: nwb.create_electrode_group(name=p, description=f"probe {p}", location=p, device=device)
              for p in dict.fromkeys(probe)}
    seen: set[int] = set()
    for c, a, p in zip(chan, area, probe):
        if int(c) not in seen:
            seen.add(int(c))
            nwb.add_electrode(id=int(c), group=groups[p], location=str(a))
    counts = np.asarray(session.spikes.spike_counts(), dtype=np.int64)
    if counts.sum() > 0:
        data = H5DataIO(_SpikeStream(session, ids, counts), chunks=(min(int(counts.sum()), SPIKE_CHUNK),),
                        maxshape=(int(counts.sum()),))
    else:
        data = np.zeros(0, dtype=np.float64)
    st = VectorData(name="spike_times", description="the spike times for each unit in seconds", data=data)
    si = VectorIndex(name="spike_times_index", data=np.cumsum(counts).astype(np.int64), target=st)
    pc = VectorData(name="peak_channel_id", description="electrode id of the unit's peak channel", data=chan)
    other = _table_columns(units.reset_index(drop=True), skip=_UNITS_RESERVED)
    # hdmf drops an iterator-backed column from its length check before its index is seen: index goes first
    nwb.units = Units(name="units", description="sorted units", id=ElementIdentifiers(name="id", data=ids),
                      columns=[si, st, pc, *other])


def _add_intervals(nwb: NWBFile, session: Session) -> None:
    st = session.stimuli
    if len(st):
        ids = np.arange(len(st), dtype=np.int64)
        names = st["stimulus_name"].astype(str) if "stimulus_name" in st else pd.Series(["stimulus"] * len(st))
        for name in dict.fromkeys(names):
            m = (names == name).to_numpy()
            nwb.add_time_intervals(_intervals(f"{_safe_name(name)}_presentations", f"presentations of {name}",
                                              st[m].reset_index(drop=True), ids[m]))
    if len(session.trials):
        nwb.trials = _intervals("trials", "behavioural trials", session.trials.reset_index(drop=True),
                                np.arange(len(session.trials), dtype=np.int64))
    ep = session.epochs.reset_index(drop=True)
    if len(ep):
        ep = ep.assign(tags=[[str(s)] for s in ep["state"]])
        name = session.metadata.get("epochs_table", "epochs")  # another name: a plain intervals table
        table = _intervals(name, "state timeline (blocks)", ep, np.arange(len(ep), dtype=np.int64))
        if name == "epochs":
            nwb.epochs = table
        else:
            nwb.add_time_intervals(table)


def _series(name: str, b: BehaviorSeries, unit: str, cls=TimeSeries, **kw) -> TimeSeries:
    ts = np.asarray(b.timestamps, dtype=np.float64)
    data = np.ones(len(ts), dtype=np.uint8) if b.data is None else np.asarray(b.data, dtype=np.float64)
    return cls(name=name, data=data, timestamps=ts, unit=b.unit or unit, **kw)


def _add_behavior(nwb: NWBFile, session: Session) -> None:
    homes = {"running_speed": ("running", "speed", "cm/s"), "licks": ("licking", "licks", "lick"),
             "rewards": ("rewards", "volume", "reward")}
    for key, b in session.behavior.items():
        if key in homes:
            module, name, unit = homes[key]
        elif key == "pupil_area":
            nwb.add_acquisition(EyeTracking(name="EyeTracking", spatial_series=_series(
                "pupil_area", b, "a.u.", SpatialSeries, reference_frame="camera")))
            continue
        else:
            module, name, unit = "behavior", key, ""
        if module not in nwb.processing:
            nwb.create_processing_module(name=module, description=f"{module} behaviour")
        nwb.processing[module].add(_series(name, b, unit))


def _add_ground_truth(nwb: NWBFile, session: Session) -> None:
    gt = session.ground_truth
    mod = ProcessingModule(name=GROUND_TRUTH, description="simulator ground truth (latents and population code)")
    nwb.add_processing_module(mod)
    mod.add(TimeSeries(name="latents", data=H5DataIO(np.asarray(gt.latents, dtype=np.float32), chunks=True),
                       unit="a.u.", starting_time=gt.latent_t0, rate=1.0 / gt.latent_dt,
                       description="latent state z(t), (time, n_latents)"))
    cols = {"baseline_hz": np.asarray(gt.baseline_hz, dtype=np.float64),
            "loadings": np.asarray(gt.loadings, dtype=np.float32)}
    for prefix, d in (("state_gain_", gt.state_gain), ("state_offset_", gt.state_offset), ("state_remix_", gt.state_remix)):
        for state, arr in (d or {}).items():
            cols[f"{prefix}{state}"] = np.asarray(arr)
    mod.add(DynamicTable(name="unit_parameters", description="per-unit parameters of the simulated code",
                         id=ElementIdentifiers(name="id", data=np.asarray(gt.unit_ids, dtype=np.int64)),
                         columns=[VectorData(name=k, description=k, data=v) for k, v in cols.items()]))


def _start_time(session: Session) -> datetime:
    s = session.metadata.get("session_start_time")
    if isinstance(s, datetime):
        return s if s.tzinfo else s.replace(tzinfo=timezone.utc)
    try:
        d = datetime.fromisoformat(str(s))
        return d if d.tzinfo else d.replace(tzinfo=timezone.utc)
    except ValueError:
        return _DEFAULT_START


# ------------------------------------------------------------------------------------------------ public
def write_session_nwb(session: Session, path: str | os.PathLike) -> Path:
    """Write ``session`` to ``path`` as VBN-layout NWB (see the module docstring); returns the final path.

    Memory stays bounded by the largest unit's spike train plus the small tables. Nothing appears under ``path``
    unless the whole file was written.
    """
    start = _start_time(session)
    nwb = NWBFile(session_description=session.metadata.get("session_description") or f"neurojepa session {session.session_id}",
                  identifier=str(session.session_id), session_start_time=start, file_create_date=start,
                  source_script="neurojepa", source_script_file_name="neurojepa.data.nwb_write")
    _add_units(nwb, session)
    _add_intervals(nwb, session)
    _add_behavior(nwb, session)
    if session.ground_truth is not None:
        _add_ground_truth(nwb, session)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not end in '.nwb'")  # the temporary name ends in .tmp
        with NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwb)
    return Path(path)
