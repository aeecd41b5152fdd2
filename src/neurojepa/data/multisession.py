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
    """(n_units, segments (n_seg, 2) int64, windows per segment (n_seg,) int64) of one prepared directory."""
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
    return n_units, segs[keep], per_seg[keep]


class MultiSessionDataset:
    """Fixed-length count windows from many prepared sessions (map-style PyTorch dataset).

    prepared_dirs: directories written by ``neurojepa prepare``; window, stride: in bins; split: train|val|test;
    states: keep only these states (default all); max_open: HDF5 files open at once (LRU); chunk_cache_mb: HDF5
    chunk cache per open file; with_gt: add ``gt_latents`` when a session has them.

    item ``i``: ``dict(counts=(window, n_units of that session) float32 tensor, session=int index into
    prepared_dirs, start=int first bin)`` (+ ``gt_latents=(window, D) float32``). Windows start every ``stride``
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
        n_units, self._segments, self._seg_offsets = [], [], []
        counts = np.zeros(len(self.paths), np.int64)
        for s, path in enumerate(self.paths):
            nu, segs, per_seg = _session_index(path, split, states, self.window, self.stride)
            n_units.append(nu)
            self._segments.append(segs)
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

        s, start = self.locate(int(i))
        f = self._file(s)
        counts = f["counts"][start : start + self.window]
        item = {"counts": torch.from_numpy(counts.astype(np.float32)), "session": s, "start": start}
        if self.with_gt and "gt_latents" in f:
            item["gt_latents"] = torch.from_numpy(f["gt_latents"][start : start + self.window].astype(np.float32))
        return item

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """Items of a batch (the DataLoader calls this with a sampler's batch). One session: every HDF5 row block
        is read once for all the windows that touch it (:func:`read_windows`), not once per window."""
        import torch

        located = [self.locate(int(i)) for i in indices]
        sessions = {s for s, _ in located}
        if len(sessions) != 1:
            return [self[int(i)] for i in indices]
        s = sessions.pop()
        f = self._file(s)
        starts = np.array([st for _, st in located], dtype=np.int64)
        counts = read_windows(f["counts"], starts, self.window)
        gt = read_windows(f["gt_latents"], starts, self.window) if self.with_gt and "gt_latents" in f else None
        items = []
        for k, st in enumerate(starts.tolist()):
            item = {"counts": torch.from_numpy(counts[k].astype(np.float32)), "session": s, "start": st}
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


class SessionBatchSampler:
    """Batches of indices into a :class:`MultiSessionDataset`, each from one session, balanced (module docstring).

    batch_size: windows per batch; batches_per_session: per epoch (default: mean of floor(windows / batch_size));
    seed: with the epoch (:meth:`set_epoch`), fixes the order; rank / world_size: this process's share of the
    batches. Every batch is full: a session with fewer than ``batches_per_session * batch_size`` windows repeats
    some (fresh shuffled passes), one with more gives a distinct random subset.
    """

    def __init__(self, dataset: MultiSessionDataset, batch_size: int = 64, batches_per_session: int | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise InputError("batch_size", f"must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise InputError("rank", f"need 0 <= rank < world_size, got {rank} of {world_size}")
        self.ranges = [(a, b) for a, b in dataset.session_ranges if b > a]  # sessions without windows sit out
        if not self.ranges:
            raise InputError("sessions", f"no session has a {dataset.window}-bin window in split '{dataset.split}'")
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        if batches_per_session is None:
            batches_per_session = round(np.mean([(b - a) // self.batch_size for a, b in self.ranges]))
        self.batches_per_session = max(1, int(batches_per_session))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """A new order per epoch (call before iterating, like ``DistributedSampler``)."""
        self.epoch = int(epoch)

    def _session_batches(self, a: int, b: int, rng: np.random.Generator) -> list[np.ndarray]:
        """``batches_per_session`` batches of session indices [a, b): shuffled passes, cycled if too few."""
        need = self.batches_per_session * self.batch_size
        idx = np.concatenate([rng.permutation(np.arange(a, b)) for _ in range(-(-need // (b - a)))])[:need]
        return [idx[k : k + self.batch_size] for k in range(0, need, self.batch_size)]

    def _all_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        per = [self._session_batches(a, b, rng) for a, b in self.ranges]
        out = []
        for r in range(self.batches_per_session):  # rounds: every session once per round, in a random order
            for k in rng.permutation(len(per)):
                out.append(per[k][r])
        n = len(out) - len(out) % self.world_size
        return out[:n][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._all_batches():
            yield batch.tolist()

    def __len__(self) -> int:
        return len(self._all_batches())


def collate_session_batch(items: list[dict]) -> dict:
    """Stack items of ONE session: ``counts`` (batch, window, n_units), ``start`` (batch,) int64, ``session`` int
    (+ ``gt_latents`` (batch, window, D)). Mixed sessions are a bug in the sampler: ValueError."""
    import torch

    sessions = {it["session"] for it in items}
    if len(sessions) != 1:
        raise ValueError(f"a batch must hold one session, got sessions {sorted(sessions)}")
    out = {"counts": torch.stack([it["counts"] for it in items]), "session": sessions.pop(),
           "start": torch.tensor([it["start"] for it in items], dtype=torch.int64)}
    if all("gt_latents" in it for it in items):
        out["gt_latents"] = torch.stack([it["gt_latents"] for it in items])
    return out
