"""Windows of binned counts, the one dataset the teacher and the student train on, and the batch they receive.

A :class:`WindowDataset` holds one or many sessions (:class:`WindowSource`): counts kept in memory (an array, or a
column view of one) or streamed from a prepared directory's HDF5 file. Each source brings its
:class:`~neurojepa.data.intervals.Intervals`; windows of ``window`` bins start every ``stride`` bins from an
interval's start and never cross its end (a change of split or state). Items are indexed globally, session by
session in time order, or named ``(session, start bin)`` (replay partners start at the replayed bin, off the
stride grid). A batch of items becomes one typed :class:`WindowBatch` (:func:`collate_windows`).

Decisions (docs/scale.md):

- **In memory or streamed, one class.** A single session of 10^5-10^6 bins x a few hundred units fits in memory
  (tens of MB of uint8) and is read there: reading item by item from HDF5 would dominate the step time. Many
  sessions are streamed: per session only its intervals, shapes and a path are held; a global index is resolved
  by two ``searchsorted`` calls (session, then interval), never through a per-window table. Open HDF5 handles are
  capped by an LRU of ``max_open`` files, each with an explicit ``chunk_cache_mb`` chunk cache, so the file side
  costs at most ``max_open x chunk_cache_mb`` whatever the number of sessions.
- **Fork safety.** Handles are never shared across processes: ``__getstate__`` drops them and a pid check drops
  inherited ones, so DataLoader workers (fork or spawn) each open their own.
- **One session per batch.** Sessions have different unit counts, so a batch cannot mix them; the samplers
  (:mod:`~neurojepa.data.samplers`) yield batches of one session. A batch's HDF5 rows are read once for all the
  windows that touch them (:func:`read_windows`).
- **Replay pairs** are batches, not items: a :class:`PairedBatch` names B/2 windows and then their B/2 partners;
  the batch it gives has ``paired=True`` (rows B/2.. are the partners of rows ..B/2).
- **States travel as codes**: the index of the window's state in its source's ``state_names`` (for a prepared
  file: the ``/labels/state`` categories; in memory: the names the caller gives, e.g. the sorted states).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import h5py
import numpy as np

from ..errors import InputError
from .dataset import SPLITS
from .intervals import Intervals

if TYPE_CHECKING:  # torch is imported where items are made: `prepare` needs data/ without torch
    import torch




# ------------------------------------------------------------------------------------------------ the batch
@dataclass
class WindowBatch:
    """B windows of one session.

    counts: (B, L, U) float32; state: (B,) int64 state codes (index into the source's ``state_names``);
    start: (B,) int64 first bins; session: index of the source; paired: rows B/2.. are the replay partners of
    rows ..B/2; latents: (B, L, D) float32 latents aligned with the counts when the source has them (the
    teacher's latents for the student, the simulator's ground truth on request), else None.
    Lightning moves the tensors to the device (dataclass fields)."""

    counts: torch.Tensor
    state: torch.Tensor
    start: torch.Tensor
    session: int = 0
    paired: bool = False
    latents: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.counts.shape[0])


class PairedBatch(list):
    """A batch of ``(session, start bin)`` windows: the first half source windows, the second half their replay
    partners in the same order. Items read through it carry ``paired=True``."""


def collate_windows(items: list[dict]) -> WindowBatch:
    """Stack items of ONE session into a :class:`WindowBatch`; mixed sessions are a bug in the sampler."""
    import torch

    sessions = {it["session"] for it in items}
    if len(sessions) != 1:
        raise ValueError(f"a batch must hold one session, got sessions {sorted(sessions)}")
    lat = [it["latents"] for it in items if "latents" in it]
    return WindowBatch(counts=torch.stack([it["counts"] for it in items]),
                       state=torch.tensor([it["state"] for it in items], dtype=torch.int64),
                       start=torch.tensor([it["start"] for it in items], dtype=torch.int64),
                       session=sessions.pop(), paired=all(it.get("paired", False) for it in items),
                       latents=torch.stack(lat) if len(lat) == len(items) else None)


# ------------------------------------------------------------------------------------------------ a session
@dataclass
class WindowSource:
    """One session's windows: its intervals and where its counts are.

    intervals: where windows may lie (with their states); state_names: the state code order; n_units: columns;
    counts / latents: in-memory arrays (anything sliced by ``[a:b]`` into an ndarray, e.g. a
    :class:`~neurojepa.metrics.rows.ColumnView`), or path: a prepared directory whose ``dataset.h5`` is streamed
    (``/counts``, and ``/gt_latents`` when ``latents_key`` is set)."""

    intervals: Intervals
    state_names: list[str]
    n_units: int
    counts: object = None
    latents: object = None
    path: Path | None = None
    latents_key: str | None = None

    @classmethod
    def in_memory(cls, counts, intervals: Intervals, latents=None,
                  state_names: Sequence[str] | None = None) -> "WindowSource":
        names = list(state_names) if state_names is not None else sorted(set(intervals.states.tolist()))
        return cls(intervals, names, int(counts.shape[1]), counts=counts, latents=latents)

    @classmethod
    def prepared(cls, path: str | os.PathLike, split: str, states: Sequence[str] | None = None,
                 with_gt: bool = False) -> "WindowSource":
        """A prepared directory's ``split`` intervals (optionally of ``states`` only), streamed from HDF5."""
        path = Path(path)
        h5file = path / "dataset.h5"
        if not h5file.is_file():
            raise InputError(path, "not a prepared dataset (no dataset.h5); run `neurojepa prepare`")
        if split not in SPLITS[1:]:
            raise InputError("split", f"unknown split '{split}' (choose from train, val, test)")
        with h5py.File(h5file, "r") as h5:
            n_units = int(h5["counts"].shape[1])
            split_codes = h5["split"][()]
            state_ds = h5["labels/state"]
            state_codes = state_ds[()]
            names = json.loads(state_ds.attrs.get("categories", "[]")) or [""]
            has_gt = "gt_latents" in h5
        mask = split_codes == SPLITS.index(split)
        if states is not None:
            mask &= np.isin(state_codes, [names.index(s) for s in states if s in names])
        runs = Intervals.runs(mask, state_codes)
        intervals = Intervals(runs.bounds, np.asarray(names, dtype=object)[runs.states.astype(int)]
                              if len(runs) else np.zeros(0, dtype=object))
        return cls(intervals, list(names), n_units, path=path,
                   latents_key="gt_latents" if with_gt and has_gt else None)


# ------------------------------------------------------------------------------------------------ the dataset
class WindowDataset:
    """Windows of ``window`` bins from one or many :class:`WindowSource` s (map-style PyTorch dataset).

    item ``i`` (a global index, or a ``(session, start bin)`` pair whose window lies inside one of the session's
    intervals): ``dict(counts=(window, U) float32 tensor, session, start, state=int code)`` (+ ``latents=(window,
    D) float32`` when the source has them). ``session_ranges[s]`` is the [a, b) global index range of session s;
    ``n_units[s]`` its unit count; ``state_names[s]`` its state code order. max_open, chunk_cache_mb: the HDF5 side
    of streamed sources (module docstring)."""

    def __init__(self, sources: Sequence[WindowSource], window: int, stride: int, *, max_open: int = 8,
                 chunk_cache_mb: float = 2.0):
        if window < 1 or stride < 1:
            raise InputError("window", f"window ({window}) and stride ({stride}) must be >= 1")
        if max_open < 1:
            raise InputError("max_open", f"need at least 1 open file, got {max_open}")
        if not sources:
            raise InputError("sessions", "no session given")
        self.window, self.stride = int(window), int(stride)
        self.sources = list(sources)
        self.max_open, self._cache_bytes = int(max_open), int(chunk_cache_mb * 2**20)
        self._intervals, self._codes, self._offsets = [], [], []
        sizes = np.zeros(len(self.sources), np.int64)
        for s, src in enumerate(self.sources):
            iv = src.intervals.longer_than(self.window)
            per = (iv.lengths - self.window) // self.stride + 1
            self._intervals.append(iv)
            self._codes.append(np.asarray([src.state_names.index(x) for x in iv.states], dtype=np.int64))
            self._offsets.append(np.concatenate([[0], np.cumsum(per)]).astype(np.int64))
            sizes[s] = per.sum()
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])  # (n_sessions + 1,) global index of each session
        self._open: OrderedDict[int, h5py.File] = OrderedDict()
        self._pid = os.getpid()

    @classmethod
    def from_prepared(cls, prepared_dirs: Sequence[str | os.PathLike], window: int, stride: int, *,
                      split: str = "train", states: Sequence[str] | None = None, with_gt: bool = False,
                      max_open: int = 8, chunk_cache_mb: float = 2.0) -> "WindowDataset":
        """Windows of ``split`` streamed from prepared directories (written by ``neurojepa prepare``)."""
        if not prepared_dirs:
            raise InputError("sessions", "no prepared directory given")
        return cls([WindowSource.prepared(p, split, states, with_gt) for p in prepared_dirs], window, stride,
                   max_open=max_open, chunk_cache_mb=chunk_cache_mb)

    # ---------------------------------------------------------------------------------------------- indexing
    @property
    def n_sessions(self) -> int:
        return len(self.sources)

    @property
    def n_units(self) -> np.ndarray:
        return np.asarray([src.n_units for src in self.sources], dtype=np.int64)

    @property
    def state_names(self) -> list[list[str]]:
        return [src.state_names for src in self.sources]

    @property
    def session_ranges(self) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """(session index, first bin) of global window ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        s = int(np.searchsorted(self.offsets, i, side="right") - 1)
        local = i - int(self.offsets[s])
        offs = self._offsets[s]
        k = int(np.searchsorted(offs, local, side="right") - 1)
        return s, int(self._intervals[s].bounds[k, 0] + (local - offs[k]) * self.stride)

    def intervals(self, s: int) -> tuple[Intervals, np.ndarray]:
        """Session ``s``'s intervals holding windows, and their state codes (n,)."""
        return self._intervals[s], self._codes[s]

    def windows(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Session ``s``'s windows in index order: (first bins (n,), state codes (n,)) int64 (transient)."""
        starts, which = self._intervals[s].window_starts(self.window, self.stride)
        return starts, self._codes[s][which]

    def _state_at(self, s: int, start: int) -> int:
        bounds = self._intervals[s].bounds
        k = int(np.searchsorted(bounds[:, 0], start, side="right") - 1)
        if k < 0 or start + self.window > bounds[k, 1]:
            raise IndexError(f"session {s}: no interval holds a window at bin {start}")
        return int(self._codes[s][k])

    def _resolve(self, i) -> tuple[int, int, int]:
        """(session, start, state code) of a global index or a (session, start) pair."""
        if isinstance(i, (tuple, list)):
            s, start = int(i[0]), int(i[1])
        else:
            s, start = self.locate(int(i))
        return s, start, self._state_at(s, start)

    # ---------------------------------------------------------------------------------------------- reading
    def _file(self, s: int) -> h5py.File:
        if self._pid != os.getpid():  # forked: the parent's handles are not ours to use
            self._open = OrderedDict()
            self._pid = os.getpid()
        f = self._open.get(s)
        if f is not None:
            self._open.move_to_end(s)
            return f
        while len(self._open) >= self.max_open:
            _, old = self._open.popitem(last=False)
            old.close()
        f = h5py.File(self.sources[s].path / "dataset.h5", "r", rdcc_nbytes=self._cache_bytes)
        self._open[s] = f
        return f

    def _read(self, s: int, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(counts (n, window, U), latents (n, window, D) or None) of session s's windows at ``starts``."""
        src, w = self.sources[s], self.window
        if src.path is None:
            counts = np.stack([src.counts[a:a + w] for a in starts.tolist()])
            lat = np.stack([src.latents[a:a + w] for a in starts.tolist()]) if src.latents is not None else None
            return counts, lat
        f = self._file(s)
        lat = read_windows(f[src.latents_key], starts, w) if src.latents_key else None
        return read_windows(f["counts"], starts, w), lat

    def __getitem__(self, i) -> dict:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence) -> list[dict]:
        """Items of a batch (the DataLoader calls this with a sampler's batch): each session's windows are read
        together (:func:`read_windows` merges HDF5 rows shared by several windows)."""
        import torch

        located = [self._resolve(i) for i in indices]
        paired = isinstance(indices, PairedBatch)
        items: list[dict] = [{} for _ in located]
        for s in dict.fromkeys(s for s, _, _ in located):
            pos = [k for k, (t, _, _) in enumerate(located) if t == s]
            starts = np.array([located[k][1] for k in pos], dtype=np.int64)
            counts, lat = self._read(s, starts)
            for j, k in enumerate(pos):
                item = {"counts": torch.from_numpy(counts[j].astype(np.float32)), "session": s,
                        "start": located[k][1], "state": located[k][2], "paired": paired}
                if lat is not None:
                    item["latents"] = torch.from_numpy(np.asarray(lat[j], dtype=np.float32))
                items[k] = item
        return items

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    def __repr__(self) -> str:
        return f"WindowDataset({self.n_sessions} sessions, {len(self)} windows of {self.window} bins)"


def read_windows(dset: h5py.Dataset, starts: np.ndarray, window: int) -> np.ndarray:
    """(len(starts), window, *dset.shape[1:]) rows ``[start, start + window)`` of ``dset`` for each start.

    Windows closer than one HDF5 chunk are merged into one read, so a chunk shared by several windows is
    decompressed once (reading window by window costs one h5py call, and often one decompression, each).
    Memory: the merged runs, at most the batch's windows plus a chunk of gap between them.
    """
    gap = dset.chunks[0] if dset.chunks else window
    order = np.argsort(starts, kind="stable")
    out = np.empty((len(starts), window, *dset.shape[1:]), dtype=dset.dtype)
    k = 0
    while k < len(order):
        j = k + 1
        while j < len(order) and starts[order[j]] <= starts[order[j - 1]] + window + gap:
            j += 1
        a, b = int(starts[order[k]]), int(starts[order[j - 1]]) + window
        run = dset[a:b]
        for m in order[k:j]:
            out[m] = run[starts[m] - a : starts[m] - a + window]
        k = j
    return out
