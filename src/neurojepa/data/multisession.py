"""Windows from many prepared sessions, streamed: a dataset, a one-session-per-batch sampler and its collate.

:class:`MultiSessionDataset` indexes the windows of every session of a split without keeping any session's data:
at construction it reads each ``dataset.h5``'s ``/split`` and ``/labels/state`` once, keeps only the session's
segments (a few (start, stop) pairs) and closes the file. An item reads its ``window`` rows from the session's
chunked ``/counts`` on demand. Decisions (docs/scale.md):

- **Memory flat in the number of sessions.** Per session only segments, shapes and a path are held; a global
  index is resolved by two ``searchsorted`` calls (session, then segment), never through a per-window table.
  Open HDF5 handles are capped by an LRU of ``max_open`` files, each with an explicit ``chunk_cache_mb`` chunk
  cache, so the file side costs at most ``max_open x chunk_cache_mb`` whatever the number of sessions.
- **Fork safety.** Handles are never shared across processes: ``__getstate__`` drops them and a pid check drops
  inherited ones, so DataLoader workers (fork or spawn) each open their own.
- **One session per batch.** Sessions have different unit counts, so a batch cannot mix them:
  :class:`SessionBatchSampler` yields batches of one session; :func:`collate_session_batch` stacks them.
- **Balanced sampling.** Every epoch each session gives the same number of batches (``batches_per_session``,
  default: the mean over sessions of floor(windows / batch_size)); a session with fewer windows reshuffles and
  cycles, one with more contributes a fresh random subset each epoch. Batches come in rounds: each round holds
  one batch of every session in a random order, so any stretch of ``n_sessions`` batches sees every session
  once (a large session cannot dominate a stretch of training steps). Seeded by ``(seed, epoch)``.
- **Rank slicing** for data-parallel training: ``rank`` / ``world_size`` keep every ``world_size``-th batch
  (the epoch's batch count is rounded down to a multiple of ``world_size`` so every rank steps equally).
- **Replay pairs, still streamed.** A session with replay pairs (the passive block replays the active block's
  flashes, teacher/replay.py) gives batches of B/2 active windows followed by their B/2 passive partners (state
  balance, as the single teacher). A partner starts at the replayed bin, not on the stride grid, so a batch may
  name windows by ``(session, start bin)`` instead of a global index (:class:`PairedBatch`); they are read from
  HDF5 like the others (:func:`read_windows`). Only the pair table (two int64 per active train window) is held.
  Every item carries its window's ``state`` code (the index into the file's ``/labels/state`` categories, read
  once per segment at construction) for the per-state count read-outs.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from ..errors import InputError
from .dataset import SPLITS, segments_of


def _session_index(path: Path, split: str, states: Sequence[str] | None, window: int, stride: int):
    """(n_units, segments (n_seg, 2) int64, windows per segment (n_seg,) int64, state code per segment (n_seg,)
    int64, state names (the ``/labels/state`` categories)) of one prepared directory."""
    h5file = path / "dataset.h5"
    if not h5file.is_file():
        raise InputError(path, "not a prepared dataset (no dataset.h5); run `neurojepa prepare`")
    with h5py.File(h5file, "r") as h5:
        n_units = int(h5["counts"].shape[1])
        split_codes = h5["split"][()]
        state_ds = h5["labels/state"]
        state_codes = state_ds[()]
        cats = json.loads(state_ds.attrs.get("categories", "[]"))
    mask = split_codes == SPLITS.index(split)
    if states is not None:
        wanted = [cats.index(s) for s in states if s in cats]
        mask &= np.isin(state_codes, wanted)
    segs = np.asarray(segments_of(mask, state_codes), dtype=np.int64).reshape(-1, 2)
    per_seg = np.maximum(0, (segs[:, 1] - segs[:, 0] - window) // stride + 1)
    keep = per_seg > 0
    seg_states = state_codes[segs[keep][:, 0]].astype(np.int64) if keep.any() else np.zeros(0, np.int64)
    return n_units, segs[keep], per_seg[keep], seg_states, list(cats) or [""]


class MultiSessionDataset:
    """Fixed-length count windows from many prepared sessions (map-style PyTorch dataset).

    prepared_dirs: directories written by ``neurojepa prepare``; window, stride: in bins; split: train|val|test;
    states: keep only these states (default all); max_open: HDF5 files open at once (LRU); chunk_cache_mb: HDF5
    chunk cache per open file; with_gt: add ``gt_latents`` when a session has them.

    item ``i``: ``dict(counts=(window, n_units of that session) float32 tensor, session=int index into
    prepared_dirs, start=int first bin, state=int code into state_names[session])`` (+ ``gt_latents=(window,
    D) float32``). An index may also be a ``(session, start bin)`` pair: the window starting there, which must
    lie inside one of the session's segments (replay partners, :class:`PairedBatch`). Windows start every ``stride``
    bins from the start of each split segment and never cross a segment (split or state change), exactly as
    :class:`~neurojepa.data.dataset.WindowDataset`. ``session_ranges[s]`` is the [a, b) global index range of
    session ``s``; ``n_units[s]`` its unit count.
    """

    def __init__(self, prepared_dirs: Sequence[str | os.PathLike], window: int = 64, stride: int = 16,
                 split: str = "train", states: Sequence[str] | None = None, max_open: int = 8,
                 chunk_cache_mb: float = 2.0, with_gt: bool = False):
        if window < 1 or stride < 1:
            raise InputError("window", f"window ({window}) and stride ({stride}) must be >= 1")
        if split not in SPLITS[1:]:
            raise InputError("split", f"unknown split '{split}' (choose from train, val, test)")
        if max_open < 1:
            raise InputError("max_open", f"need at least 1 open file, got {max_open}")
        if not prepared_dirs:
            raise InputError("sessions", "no prepared directory given")
        self.paths = [Path(p) for p in prepared_dirs]
        self.window, self.stride, self.split = int(window), int(stride), split
        self.max_open, self.with_gt = int(max_open), bool(with_gt)
        self._cache_bytes = int(chunk_cache_mb * 2**20)
        n_units, self._segments, self._seg_offsets, self._seg_states = [], [], [], []
        self.state_names: list[list[str]] = []  # per session: its state categories (item ``state`` indexes them)
        counts = np.zeros(len(self.paths), np.int64)
        for s, path in enumerate(self.paths):
            nu, segs, per_seg, seg_states, names = _session_index(path, split, states, self.window, self.stride)
            n_units.append(nu)
            self._segments.append(segs)
            self._seg_states.append(seg_states)
            self.state_names.append(names)
            self._seg_offsets.append(np.concatenate([[0], np.cumsum(per_seg)]))
            counts[s] = per_seg.sum()
        self.n_units = np.asarray(n_units, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])  # (n_sessions + 1,) global index of each session
        self._open: OrderedDict[int, h5py.File] = OrderedDict()
        self._pid = os.getpid()

    @property
    def n_sessions(self) -> int:
        return len(self.paths)

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
        offs = self._seg_offsets[s]
        k = int(np.searchsorted(offs, local, side="right") - 1)
        return s, int(self._segments[s][k, 0] + (local - offs[k]) * self.stride)

    def segments(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Session ``s``'s segments holding windows: ([start, stop) bins (n_seg, 2), state code (n_seg,))."""
        return self._segments[s], self._seg_states[s]

    def windows(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Session ``s``'s windows in index order: (first bins (n,), state codes (n,)), int64 (transient: for
        pairing at setup; nothing per window is kept)."""
        segs, codes = self._segments[s], self._seg_states[s]
        starts = [np.arange(a, b - self.window + 1, self.stride) for a, b in segs]
        n = [len(x) for x in starts]
        return (np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, np.int64),
                np.repeat(codes, n).astype(np.int64))

    def _state_at(self, s: int, start: int) -> int:
        """State code of the window of session ``s`` at ``start``; IndexError when no segment holds it."""
        segs = self._segments[s]
        k = int(np.searchsorted(segs[:, 0], start, side="right") - 1)
        if k < 0 or start + self.window > segs[k, 1]:
            raise IndexError(f"session {s}: no {self.split} segment holds a window at bin {start}")
        return int(self._seg_states[s][k])

    def _resolve(self, i) -> tuple[int, int, int]:
        """(session, start, state code) of a global index or a (session, start) pair."""
        if isinstance(i, (tuple, list)):
            s, start = int(i[0]), int(i[1])
            return s, start, self._state_at(s, start)
        s, start = self.locate(int(i))
        return s, start, self._state_at(s, start)

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
        f = h5py.File(self.paths[s] / "dataset.h5", "r", rdcc_nbytes=self._cache_bytes)
        self._open[s] = f
        return f

    def __getitem__(self, i: int) -> dict:
        import torch

        s, start, code = self._resolve(i)
        f = self._file(s)
        counts = f["counts"][start : start + self.window]
        item = {"counts": torch.from_numpy(counts.astype(np.float32)), "session": s, "start": start, "state": code}
        if self.with_gt and "gt_latents" in f:
            item["gt_latents"] = torch.from_numpy(f["gt_latents"][start : start + self.window].astype(np.float32))
        return item

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """Items of a batch (the DataLoader calls this with a sampler's batch). One session: every HDF5 row block
        is read once for all the windows that touch it (:func:`read_windows`), not once per window."""
        import torch

        located = [self._resolve(i) for i in indices]
        paired = isinstance(indices, PairedBatch)
        sessions = {s for s, _, _ in located}
        if len(sessions) != 1:
            return [self[i] | {"paired": paired} for i in indices]
        s = sessions.pop()
        f = self._file(s)
        starts = np.array([st for _, st, _ in located], dtype=np.int64)
        counts = read_windows(f["counts"], starts, self.window)
        gt = read_windows(f["gt_latents"], starts, self.window) if self.with_gt and "gt_latents" in f else None
        items = []
        for k, st in enumerate(starts.tolist()):
            item = {"counts": torch.from_numpy(counts[k].astype(np.float32)), "session": s, "start": st,
                    "state": located[k][2], "paired": paired}
            if gt is not None:
                item["gt_latents"] = torch.from_numpy(gt[k].astype(np.float32))
            items.append(item)
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
        return (f"MultiSessionDataset({self.n_sessions} sessions, {len(self)} windows of {self.window} bins, "
                f"split={self.split!r})")


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


class PairedBatch(list):
    """A batch of ``(session, start bin)`` windows: the first half active windows, the second half their replay
    partners in the same order (teacher/module.py ``losses(paired=True)``). Items read through it carry
    ``paired=True``; :func:`collate_session_batch` passes that on."""


class SessionBatchSampler:
    """Batches of indices into a :class:`MultiSessionDataset`, each from one session, balanced (module docstring).

    batch_size: windows per batch; batches_per_session: per epoch (default: mean of floor(windows / batch_size));
    seed: with the epoch (:meth:`set_epoch`), fixes the order; rank / world_size: this process's share of the
    batches. Every batch is full: a session with fewer than ``batches_per_session * batch_size`` windows repeats
    some (fresh shuffled passes), one with more gives a distinct random subset.
    pairs: {session index: (active starts (n,), partner starts (n,)) bins}: that session's batches are
    :class:`PairedBatch` es of batch_size // 2 pairs drawn the same way (shuffled passes over its pairs); the
    other sessions' batches are unchanged (plain global indices).
    """

    def __init__(self, dataset: MultiSessionDataset, batch_size: int = 64, batches_per_session: int | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1,
                 pairs: dict[int, tuple[np.ndarray, np.ndarray]] | None = None):
        if batch_size < 1:
            raise InputError("batch_size", f"must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise InputError("rank", f"need 0 <= rank < world_size, got {rank} of {world_size}")
        # sessions without windows sit out; the session index goes along for the pair table
        self.ranges = [(s, a, b) for s, (a, b) in enumerate(dataset.session_ranges) if b > a]
        if not self.ranges:
            raise InputError("sessions", f"no session has a {dataset.window}-bin window in split '{dataset.split}'")
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.pairs = {int(s): (np.asarray(a, np.int64), np.asarray(p, np.int64))
                      for s, (a, p) in (pairs or {}).items() if len(a) > 0}
        if self.pairs and self.batch_size < 2:
            raise InputError("batch_size", f"replay pairs need batches of >= 2 windows, got {batch_size}")
        self.rank, self.world_size = int(rank), int(world_size)
        if batches_per_session is None:
            batches_per_session = round(np.mean([(b - a) // self.batch_size for _, a, b in self.ranges]))
        self.batches_per_session = max(1, int(batches_per_session))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """A new order per epoch (call before iterating, like ``DistributedSampler``)."""
        self.epoch = int(epoch)

    def _session_batches(self, a: int, b: int, rng: np.random.Generator, size: int | None = None) -> list[np.ndarray]:
        """``batches_per_session`` batches of ``size`` (default batch_size) indices of [a, b): shuffled passes,
        cycled if too few."""
        size = size or self.batch_size
        need = self.batches_per_session * size
        idx = np.concatenate([rng.permutation(np.arange(a, b)) for _ in range(-(-need // (b - a)))])[:need]
        return [idx[k : k + size] for k in range(0, need, size)]

    def _paired_batches(self, s: int, rng: np.random.Generator) -> list[PairedBatch]:
        """Session ``s``'s batches of batch_size // 2 replay pairs: actives, then their partners."""
        act, par = self.pairs[s]
        rows = self._session_batches(0, len(act), rng, self.batch_size // 2)
        return [PairedBatch([(s, int(x)) for x in act[r]] + [(s, int(x)) for x in par[r]]) for r in rows]

    def _all_batches(self) -> list:
        rng = np.random.default_rng([self.seed, self.epoch])
        per = [self._paired_batches(s, rng) if s in self.pairs else self._session_batches(a, b, rng)
               for s, a, b in self.ranges]
        out = []
        for r in range(self.batches_per_session):  # rounds: every session once per round, in a random order
            for k in rng.permutation(len(per)):
                out.append(per[k][r])
        n = len(out) - len(out) % self.world_size
        return out[:n][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list]:
        for batch in self._all_batches():
            yield batch if isinstance(batch, PairedBatch) else batch.tolist()

    def __len__(self) -> int:
        return len(self._all_batches())


def collate_session_batch(items: list[dict]) -> dict:
    """Stack items of ONE session: ``counts`` (batch, window, n_units), ``start`` (batch,) int64, ``session`` int,
    ``state`` (batch,) int64 codes, ``paired`` bool (a :class:`PairedBatch`: rows batch/2.. are the partners of
    rows ..batch/2) (+ ``gt_latents`` (batch, window, D)). Mixed sessions are a bug in the sampler: ValueError."""
    import torch

    sessions = {it["session"] for it in items}
    if len(sessions) != 1:
        raise ValueError(f"a batch must hold one session, got sessions {sorted(sessions)}")
    out = {"counts": torch.stack([it["counts"] for it in items]), "session": sessions.pop(),
           "start": torch.tensor([it["start"] for it in items], dtype=torch.int64),
           "paired": all(it.get("paired", False) for it in items)}
    if all("state" in it for it in items):
        out["state"] = torch.tensor([it["state"] for it in items], dtype=torch.int64)
    if all("gt_latents" in it for it in items):
        out["gt_latents"] = torch.stack([it["gt_latents"] for it in items])
    return out
