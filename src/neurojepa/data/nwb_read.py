"""Open an NWB file as a :class:`~neurojepa.data.session.Session`, reading spike times lazily.

Two layouts are understood, by one reader:

- **VBN** (Allen Visual Behavior Neuropixels, and every file :mod:`neurojepa.data.nwb_write` produces): units with
  ``peak_channel_id`` into the electrodes table (brain area = electrode ``location``/``structure_acronym``),
  quality-metric columns, one ``/intervals/<stimulus>_presentations`` table per stimulus, ``/intervals/trials``,
  ``processing/{running,licking,rewards}``, ``acquisition/EyeTracking``, and (simulated files only) a
  ``processing/ground_truth`` module. The state timeline is derived from ``stimulus_block``: the block with
  ``active == True`` is ``"active"``; a non-active block that shows the same natural images (same
  ``stimulus_name`` as the active block, or the same ``image_name`` sequence) is ``"passive"``; other blocks are
  named by their stimulus (``"gabor"``, ``"flash"``, ``"spontaneous"``; a gray block shorter than
  :data:`SHORT_GRAY_S` is ``"gray"``; anything else keeps its stimulus name).
- **Generic NWB** with a Units table (e.g. a phy export): states come from ``states_from="TABLE[:COLUMN]"``
  (rows of ``/intervals/TABLE``, state = COLUMN; default column ``tags``, else the first string column, else the
  table name). Without it, one epoch ``"all"`` spans the first to the last spike.

Design decisions:

- h5py directly, not pynwb: opening a 3 GB VBN file with pynwb builds thousands of objects; h5py reads only
  the small tables. The file stays open until :meth:`Session.close` (or the ``with`` block) ends.
- A URL (``https://``, ``http://``, ``s3://``) is read in place: h5py reads through a file object that turns each
  read into an HTTP Range request (:mod:`neurojepa.data.remote`), so opening a 3 GB VBN file moves only its
  metadata, tables and the Units index.
- Spike times are read per unit from the ragged ``spike_times`` dataset (``spike_times_index[i]`` is the END
  offset of unit ``i``). A time range on a unit with more than :data:`BISECT_MIN_SPIKES` spikes is located by
  binary search on the dataset itself (about 20 single-element reads), so only the spikes in the range are read;
  smaller units are read whole and cut with ``searchsorted``.
- Bad spike times: NaN/inf or negative times raise :class:`InputError` naming the file and unit (a sorter that
  writes them is broken, and silently dropping spikes would bias rates). Unsorted times are sorted with a logged
  warning (ordering is lossless to fix, and some exporters concatenate segments). Validation covers what is
  read: a unit read whole is checked whole; a large unit read through a time range is checked in that range.
- Ragged columns of interval tables (``tags``, ``lick_times``) become lists; ragged and multi-dimensional columns
  of the units table (``spike_amplitudes``, ``waveform_mean``) are skipped (large, and not needed downstream);
  object-reference and compound columns are skipped; DynamicTableRegion columns become ints.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath
from typing import Sequence
from urllib.parse import urlparse

import h5py
import numpy as np
import pandas as pd

from ..errors import InputError
from .session import (
    STATE_ACTIVE,
    STATE_ALL,
    STATE_PASSIVE,
    BehaviorSeries,
    GroundTruth,
    Session,
    SpikeTrains,
    restrict,
)

log = logging.getLogger(__name__)

BISECT_MIN_SPIKES = 65_536  # units larger than this are range-searched on disk instead of read whole
SHORT_GRAY_S = 60.0  # gray/spontaneous blocks shorter than this are state "gray", longer ones "spontaneous"
GROUND_TRUTH = "ground_truth"  # processing module written by nwb_write for simulated sessions
GT_PREFIXES = ("state_gain_", "state_offset_", "state_remix_")  # per-state columns: <prefix><state>


# ------------------------------------------------------------------------------------------------ spikes
class NWBSpikes:
    """A lazy :class:`~neurojepa.data.session.SpikeSource` over ``/units/spike_times`` of an open file.

    Opening reads only ``/units/id`` and ``/units/spike_times_index`` (n_units integers). ``values_read``
    counts the spike times read from disk so far (tests use it to prove laziness).
    """

    def __init__(self, h5: h5py.File, path: Path):
        self._h5 = h5
        self.path = path
        units = h5["units"]
        self._times = units["spike_times"]  # h5py dataset, never read whole here
        self.unit_ids = units["id"][:].astype(np.int64)
        ends = units["spike_times_index"][:].astype(np.int64) if "spike_times_index" in units else np.zeros(0, np.int64)
        if len(ends) != len(self.unit_ids) or np.any(np.diff(ends) < 0) or (len(ends) and ends[-1] != len(self._times)):
            raise InputError(path, "units/spike_times_index does not match units/spike_times (corrupt Units table)")
        ids, n = np.unique(self.unit_ids, return_counts=True)
        if (n > 1).any():
            raise InputError(path, f"units/id holds duplicate unit ids ({', '.join(map(str, ids[n > 1][:5]))}): "
                                   "a corrupt Units table")
        self._offsets = np.concatenate([[0], ends]).astype(np.int64)
        self._pos = {int(u): i for i, u in enumerate(self.unit_ids)}
        self.values_read = 0
        self._warned: set[int] = set()

    @property
    def unsorted_units(self) -> list[int]:
        """Units found so far with unsorted spike times (each is sorted on read, with one warning)."""
        return sorted(self._warned)

    def __getstate__(self) -> dict:
        """Pickle by path (an open h5py handle cannot cross processes); the copy reopens the file."""
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(_open_h5(state["path"]), state["path"])  # a URL is read in place again

    def spike_counts(self) -> np.ndarray:
        """(n_units,) int64 spikes per unit, from the index alone."""
        return np.diff(self._offsets)

    def close(self) -> None:
        self._h5.close()

    def _slice(self, lo: int, hi: int) -> np.ndarray:
        self.values_read += hi - lo
        return np.asarray(self._times[lo:hi], dtype=np.float64)

    def _bisect(self, lo: int, hi: int, t: float) -> int:
        """First index in [lo, hi) whose time is >= t, by binary search on the dataset (one value per step)."""
        while lo < hi:
            mid = (lo + hi) // 2
            self.values_read += 1
            if self._times[mid] < t:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _check(self, uid: int, t: np.ndarray) -> np.ndarray:
        if not np.all(np.isfinite(t)):
            raise InputError(self.path, f"unit {uid} has NaN or infinite spike times")
        if len(t) and t.min() < 0:
            raise InputError(self.path, f"unit {uid} has negative spike times (min {t.min():.6g} s)")
        if np.any(np.diff(t) < 0):
            if uid not in self._warned:
                self._warned.add(uid)
                log.warning("%s: unit %d has unsorted spike times; sorting them", self.path, uid)
            t = np.sort(t)
        return t

    def read(
        self, unit_ids: Sequence[int] | None = None, t_start: float | None = None, t_stop: float | None = None
    ) -> SpikeTrains:
        """Spike times (s) of ``unit_ids`` (all when None, in the given order) with ``t_start <= t < t_stop``."""
        ids = self.unit_ids if unit_ids is None else np.asarray(unit_ids, dtype=np.int64).reshape(-1)
        out = []
        for u in ids:
            i = self._pos.get(int(u))
            if i is None:
                raise KeyError(f"unit {int(u)} is not in {self.path}")
            lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
            ranged = t_start is not None or t_stop is not None
            if ranged and hi - lo > BISECT_MIN_SPIKES:
                a = lo if t_start is None else self._bisect(lo, hi, t_start)
                b = hi if t_stop is None else self._bisect(a, hi, t_stop)
                t = self._check(int(u), self._slice(a, b))
            else:
                t = restrict(self._check(int(u), self._slice(lo, hi)), t_start, t_stop)
            out.append(t)
        return SpikeTrains.from_list(ids, out)


# ------------------------------------------------------------------------------------------------ tables
def _decode(ds: h5py.Dataset) -> np.ndarray:
    """A 1-d dataset as numpy; strings decoded to ``str`` objects."""
    if h5py.check_string_dtype(ds.dtype) is not None:
        return np.asarray(ds.asstr()[()], dtype=object)
    return ds[()]


def _readable(ds) -> bool:
    """False for what a DataFrame cannot hold usefully: object references, compound (e.g. TimeSeries refs)."""
    if not isinstance(ds, h5py.Dataset):
        return False
    return h5py.check_ref_dtype(ds.dtype) is None and ds.dtype.names is None


def read_table(group: h5py.Group, *, ragged: bool = True, skip: Sequence[str] = (), max_ndim: int = 1) -> pd.DataFrame:
    """An hdmf DynamicTable as a DataFrame with the table's ``id`` as a plain column.

    ragged: True turns ``X`` + ``X_index`` columns into lists, False skips them (doubly ragged ones always are).
    max_ndim: columns with more dimensions are skipped; 2-d columns kept (``max_ndim=2``) become one array per row.
    """
    colnames = [c.decode() if isinstance(c, bytes) else str(c) for c in group.attrs.get("colnames", [])]
    data: dict[str, object] = {"id": group["id"][()].astype(np.int64)} if "id" in group else {}
    for col in colnames:
        if col in skip or col not in group or not _readable(group[col]):
            continue
        ds = group[col]
        if f"{col}_index" in group:
            if not ragged or f"{col}_index_index" in group:
                continue
            values = _decode(ds)
            ends = group[f"{col}_index"][()].astype(np.int64)
            starts = np.concatenate([[0], ends[:-1]])
            data[col] = [list(values[a:b]) for a, b in zip(starts, ends)]
        elif ds.ndim > max_ndim:
            continue
        elif ds.ndim == 2:
            data[col] = list(ds[()])
        else:
            data[col] = _decode(ds)
    return pd.DataFrame(data)


def _timeseries(group: h5py.Group) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps (n,) s, data) of an NWB TimeSeries group, from ``timestamps`` or ``starting_time`` + rate."""
    data = group["data"][()]
    if "timestamps" in group:
        ts = group["timestamps"][()].astype(np.float64)
    else:
        st = group["starting_time"]
        ts = float(st[()]) + np.arange(len(data)) / float(st.attrs["rate"])
    return ts, data


# ------------------------------------------------------------------------------------------------ units
def _str_or_unknown(values) -> np.ndarray:
    """Strings as they are; empty or missing ones (phy exports leave ``location`` blank) become ``"unknown"``."""
    return np.asarray([v.strip() if isinstance(v, str) and v.strip() else "unknown" for v in values], dtype=object)


def _read_units(h5: h5py.File) -> pd.DataFrame:
    df = read_table(h5["units"], ragged=False, skip=("spike_times",)).rename(columns={"id": "unit_id"})
    df = df.set_index("unit_id")
    area = None
    for col in ("structure_acronym", "location"):
        if col in df and any(isinstance(v, str) and v.strip() for v in df[col]):
            area = _str_or_unknown(df[col])
            break
    elec_path = "general/extracellular_ephys/electrodes"
    if area is None and "peak_channel_id" in df and elec_path in h5:
        elec = read_table(h5[elec_path], ragged=False)
        for col in ("structure_acronym", "location"):
            if col in elec and any(isinstance(v, str) and v.strip() for v in elec[col]):
                lookup = dict(zip(elec["id"].tolist(), _str_or_unknown(elec[col])))
                area = np.asarray([lookup.get(int(c), "unknown") for c in df["peak_channel_id"]], dtype=object)
                break
    df["area"] = area if area is not None else np.full(len(df), "unknown", dtype=object)
    if "cell_type" not in df:
        if "waveform_duration" in df:  # ms; narrow spikes are fast-spiking, putative inhibitory
            dur = df["waveform_duration"].to_numpy(dtype=np.float64)
            df["cell_type"] = np.where(np.isnan(dur), "unknown", np.where(dur < 0.4, "fs", "rs"))
        else:
            df["cell_type"] = "unknown"
    df.index = df.index.astype(np.int64)
    return df


# ------------------------------------------------------------------------------------------------ states
def _read_stimuli(h5: h5py.File) -> pd.DataFrame:
    """All ``/intervals/*_presentations`` tables, concatenated, sorted by start_time (stable), index 0..n-1."""
    if "intervals" not in h5:
        return pd.DataFrame()
    parts = []
    for name in sorted(h5["intervals"]):
        if name.endswith("_presentations"):
            t = read_table(h5["intervals"][name]).drop(columns=["id"], errors="ignore")
            if "stimulus_name" not in t:
                t["stimulus_name"] = name[: -len("_presentations")]
            parts.append(t)
    if not parts:
        return pd.DataFrame()
    df = pd.concat(parts, ignore_index=True)
    return df.sort_values("start_time", kind="mergesort", ignore_index=True)


def _name_state(stimulus_name: str, duration: float) -> str:
    s = stimulus_name.lower()
    if "gabor" in s:
        return "gabor"
    if "flash" in s:
        return "flash"
    if "spontaneous" in s or "gray" in s or "grey" in s:
        return "gray" if duration < SHORT_GRAY_S else "spontaneous"
    return stimulus_name


def epochs_from_stimuli(stimuli: pd.DataFrame) -> pd.DataFrame:
    """The state timeline of a VBN-layout session: one row per ``stimulus_block`` (see the module docstring).

    Without a ``stimulus_block`` column, each run of consecutive presentations of one stimulus is a block.
    """
    st = stimuli
    if "stimulus_block" in st:
        block = pd.to_numeric(st["stimulus_block"], errors="coerce").fillna(-1).astype(np.int64).to_numpy()
    else:
        names = st["stimulus_name"].astype(str).to_numpy()
        block = np.concatenate([[0], np.cumsum(names[1:] != names[:-1])]).astype(np.int64)
    active = st["active"].fillna(False).astype(bool).to_numpy() if "active" in st else np.zeros(len(st), bool)
    rows = []
    for b in pd.unique(block):
        m = block == b
        sub = st[m]
        name = str(sub["stimulus_name"].mode().iloc[0]) if "stimulus_name" in sub else f"block{b}"
        images = tuple(sub["image_name"].astype(str)) if "image_name" in sub else None
        rows.append(dict(start_time=float(sub["start_time"].min()), stop_time=float(sub["stop_time"].max()),
                         block=int(b), stimulus_name=name, _active=bool(active[m].any()), _images=images))
    act = [r for r in rows if r["_active"]]
    for r in rows:
        if r["_active"]:
            r["state"] = STATE_ACTIVE
        elif any(r["stimulus_name"] == a["stimulus_name"] or (r["_images"] and r["_images"] == a["_images"]) for a in act):
            r["state"] = STATE_PASSIVE
        else:
            r["state"] = _name_state(r["stimulus_name"], r["stop_time"] - r["start_time"])
    out = pd.DataFrame(rows, columns=["start_time", "stop_time", "state", "block", "stimulus_name"])
    return out.sort_values("start_time", kind="mergesort", ignore_index=True)


def epochs_from_table(h5: h5py.File, path: Path, states_from: str) -> pd.DataFrame:
    """Epochs from the rows of ``/intervals/TABLE`` with state = ``COLUMN`` (``states_from="TABLE[:COLUMN]"``)."""
    table, _, column = states_from.partition(":")
    tables = sorted(h5["intervals"]) if "intervals" in h5 else []
    if table not in tables:
        raise InputError(path, f"no intervals table {table!r} for --states-from (tables: {', '.join(tables) or 'none'})")
    df = read_table(h5["intervals"][table])
    if column and column not in df:
        cols = [c for c in df.columns if c not in ("id", "start_time", "stop_time")]
        raise InputError(path, f"intervals table {table!r} has no column {column!r} (columns: {', '.join(cols) or 'none'})")
    if not column:
        strings = [c for c in df.columns if len(df) and df[c].map(lambda v: isinstance(v, str)).all()]
        column = next((c for c in ["tags", "stimulus_name", "label", *strings] if c in df), "")
    if column:
        state = [",".join(map(str, v)) if isinstance(v, (list, np.ndarray)) else str(v) for v in df[column]]
    else:
        state = [table] * len(df)
    out = pd.DataFrame(dict(start_time=df["start_time"].astype(float), stop_time=df["stop_time"].astype(float),
                            state=state, block=np.arange(len(df)), stimulus_name=state))
    return out.sort_values("start_time", kind="mergesort", ignore_index=True)


# ------------------------------------------------------------------------------------------------ behaviour
def _read_behavior(h5: h5py.File) -> dict[str, BehaviorSeries]:
    out: dict[str, BehaviorSeries] = {}
    proc = h5.get("processing", {})

    def unit_of(g):
        return str(g["data"].attrs.get("unit", "")) if "data" in g else ""

    if "running" in proc and "speed" in proc["running"]:
        ts, data = _timeseries(proc["running"]["speed"])
        out["running_speed"] = BehaviorSeries(ts, np.asarray(data, np.float64), unit_of(proc["running"]["speed"]))
    if "licking" in proc and "licks" in proc["licking"]:
        out["licks"] = BehaviorSeries(_timeseries(proc["licking"]["licks"])[0])
    if "rewards" in proc:
        names = [n for n in ("volume", "autorewarded") if n in proc["rewards"]] + sorted(proc["rewards"])
        for n in names:
            g = proc["rewards"][n]
            if isinstance(g, h5py.Group) and "data" in g:
                out["rewards"] = BehaviorSeries(_timeseries(g)[0])
                break
    eye = h5.get("acquisition/EyeTracking")
    if eye is not None:
        for key in ("pupil_tracking", "pupil_area"):
            g = eye.get(key)
            if isinstance(g, h5py.Group):
                ts, data = _timeseries(g)
                if key == "pupil_tracking" and "area" in g:  # VBN EllipseSeries: area is its own dataset
                    data = g["area"][()]
                out["pupil_area"] = BehaviorSeries(ts, np.asarray(data, np.float64).reshape(len(ts), -1)[:, 0])
                break
    other = proc.get("behavior")
    if isinstance(other, h5py.Group):  # streams without a VBN home, written by nwb_write
        for n in other:
            ts, data = _timeseries(other[n])
            out.setdefault(n, BehaviorSeries(ts, np.asarray(data, np.float64), unit_of(other[n])))
    return out


# ------------------------------------------------------------------------------------------------ ground truth
def _read_ground_truth(h5: h5py.File) -> GroundTruth | None:
    if f"processing/{GROUND_TRUTH}" not in h5:
        return None
    mod = h5[f"processing/{GROUND_TRUTH}"]
    lat = mod["latents"]
    rate = float(lat["starting_time"].attrs["rate"])
    params = mod["unit_parameters"]
    colnames = [c.decode() if isinstance(c, bytes) else str(c) for c in params.attrs["colnames"]]

    def loader(name: str):
        if name == "latents":
            return np.asarray(lat["data"][()], dtype=np.float32)
        if name in ("loadings", "baseline_hz"):
            return params[name][()]
        prefix = f"{name}_"
        return {c[len(prefix):]: params[c][()] for c in colnames if c.startswith(prefix)}

    return GroundTruth(loader, latent_dt=1.0 / rate, latent_t0=float(lat["starting_time"][()]),
                       n_latents=int(lat["data"].shape[1]), unit_ids=params["id"][()])


# ------------------------------------------------------------------------------------------------ open
def _open_h5(path: Path | str) -> h5py.File:
    """The open HDF5 file of a local path or a URL (read in place over HTTP ranges, :mod:`~neurojepa.data.remote`),
    checked to be NWB with a Units table."""
    from .remote import is_url, open_hdf5

    if is_url(path):
        h5 = open_hdf5(path)  # InputError naming the URL: unreachable, HTTP 404 etc., no range support, not HDF5
    else:
        if not path.exists():
            raise InputError(path, "no such file")
        if path.is_dir():
            raise InputError(path, "is a directory, not an NWB file")
        try:
            h5 = h5py.File(path, "r")
        except OSError as err:
            why = "not an HDF5 file, so not NWB" if not h5py.is_hdf5(path) else "truncated or corrupt HDF5 file"
            raise InputError(path, f"{why} ({' '.join(str(err).split())})") from None
    attrs = h5.attrs
    ntype = attrs.get("neurodata_type", b"")
    ntype = ntype.decode() if isinstance(ntype, bytes) else str(ntype)
    if "nwb_version" not in attrs or ntype != "NWBFile":
        h5.close()
        raise InputError(path, "HDF5 file but not NWB (no nwb_version / NWBFile root)")
    if "units" not in h5:
        h5.close()
        raise InputError(path, "NWB file has no Units table (/units), so no spike times to read")
    if "spike_times" not in h5["units"]:
        h5.close()
        raise InputError(path, "NWB Units table has no spike_times column")
    return h5


def _scalar_str(h5: h5py.File, key: str) -> str:
    if key not in h5:
        return ""
    v = h5[key][()]
    if isinstance(v, np.ndarray):
        v = v.reshape(-1)[0] if v.size else ""
    return v.decode() if isinstance(v, bytes) else str(v)


def open_session(path: str | os.PathLike, states_from: str | None = None) -> Session:
    """Open an NWB file lazily as a :class:`Session` (spike times stay on disk until asked for).

    path: a local file, or an ``https://``, ``http://`` or ``s3://`` URL read in place: only the byte ranges that
    are read travel (HTTP Range requests, :mod:`neurojepa.data.remote`), nothing is downloaded first.

    states_from: ``"TABLE[:COLUMN]"`` takes the state timeline from ``/intervals/TABLE`` (state = COLUMN);
    otherwise a VBN file's states come from its stimulus blocks, and any other file gets one ``"all"`` epoch.
    Close the file with ``session.close()`` or ``with open_session(...) as s:``.
    Raises :class:`InputError` for a missing, non-NWB, truncated or spike-less file, and for a bad ``states_from``.
    """
    from .remote import is_url

    path = str(path) if is_url(path) else Path(path)  # a URL stays a string (Path would fold its //)
    h5 = _open_h5(path)
    try:
        spikes = NWBSpikes(h5, path)
        units = _read_units(h5)
        stimuli = _read_stimuli(h5)
        trials = read_table(h5["intervals/trials"]).drop(columns=["id"]) if "intervals/trials" in h5 else pd.DataFrame()
        if states_from:
            epochs = epochs_from_table(h5, path, states_from)
        elif len(stimuli):
            epochs = epochs_from_stimuli(stimuli)
        else:
            epochs = _whole_recording(spikes, path)
        behavior = _read_behavior(h5)
        ground_truth = _read_ground_truth(h5)
        metadata = {k: _scalar_str(h5, k) for k in ("identifier", "session_description", "session_start_time")}
        metadata["nwb_version"] = str(h5.attrs["nwb_version"])
    except InputError:
        h5.close()
        raise
    except (OSError, KeyError, ValueError) as err:  # a truncated file often opens, then fails on a dataset
        h5.close()
        raise InputError(path, f"cannot read NWB contents, truncated or corrupt? ({' '.join(str(err).split())})") from None
    stem = path.stem if isinstance(path, Path) else PurePosixPath(urlparse(path).path).stem
    session_id = metadata["identifier"] or stem
    return Session(session_id=session_id, units=units, spikes=spikes, epochs=epochs, stimuli=stimuli, trials=trials,
                   behavior=behavior, ground_truth=ground_truth, source=path, metadata=metadata)


def _whole_recording(spikes: NWBSpikes, path: Path) -> pd.DataFrame:
    """One ``"all"`` epoch from the first to the last spike (reads each unit's first and last spike only)."""
    counts = spikes.spike_counts()
    firsts, lasts = [], []
    for i, n in enumerate(counts):
        if n:
            lo, hi = spikes._offsets[i], spikes._offsets[i + 1]
            firsts.append(float(spikes._slice(lo, lo + 1)[0]))
            lasts.append(float(spikes._slice(hi - 1, hi)[0]))
    t0 = min(firsts) if firsts else 0.0
    t1 = np.nextafter(max(lasts), np.inf) if lasts else 0.0  # stop is exclusive; keep the last spike inside
    return pd.DataFrame(dict(start_time=[t0], stop_time=[float(t1)], state=[STATE_ALL], block=[0], stimulus_name=[STATE_ALL]))
