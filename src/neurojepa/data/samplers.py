"""Which windows go into which batch: seeded batch samplers over a :class:`~neurojepa.data.windows.WindowDataset`.

Both yield whole batches (lists of window indices, or :class:`~neurojepa.data.windows.PairedBatch` es of
``(session, start)`` pairs) and are given to a DataLoader as ``batch_sampler``. Both take the process's ``rank``
and ``world_size`` and keep every ``world_size``-th batch, so data-parallel training needs no distributed sampler
(``use_distributed_sampler=False`` in :func:`~neurojepa.training.make_trainer`). Both have a ``sampler``
attribute that is themselves: Lightning calls ``set_epoch`` on a loader's ``sampler`` and
``batch_sampler.sampler`` only, never on the batch sampler, which would otherwise repeat epoch 0 every epoch.

- :class:`StateBalancedBatches` (one session, the teacher and transfer): windows drawn with replacement, every
  state equally often, a generator seeded by (seed, epoch): the order is a pure function of the epoch number, so
  resuming a run replays the same batches. With replay pairs the draw is over the pairs and each batch holds its
  windows, then their partners (state balance kept by construction).
- :class:`SessionBatchSampler` (many sessions): one session per batch, every session the same number of batches
  per epoch (docs/scale.md).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..errors import InputError
from .windows import PairedBatch, WindowDataset


class _EpochBatches:
    """Shared by both samplers: epoch, rank slicing, and the ``sampler`` alias Lightning sets the epoch on."""

    rank: int = 0
    world_size: int = 1
    epoch: int = 0

    def _check_rank(self, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise InputError("rank", f"need 0 <= rank < world_size, got {rank} of {world_size}")
        self.rank, self.world_size = int(rank), int(world_size)

    @property
    def sampler(self):
        return self

    def set_epoch(self, epoch: int) -> None:
        """A new order per epoch (called by Lightning at the start of every epoch)."""
        self.epoch = int(epoch)

    def _all_batches(self) -> list:
        raise NotImplementedError

    def _mine(self, batches: list) -> list:
        n = len(batches) - len(batches) % self.world_size
        return batches[:n][self.rank::self.world_size]

    def __iter__(self) -> Iterator[list]:
        for batch in self._mine(self._all_batches()):
            yield batch if isinstance(batch, PairedBatch) else np.asarray(batch).tolist()

    def _count(self) -> int:
        """Batches per epoch on all ranks (without drawing them)."""
        raise NotImplementedError

    def __len__(self) -> int:  # Lightning asks every epoch: counted, not drawn
        return self._count() // self.world_size


class StateBalancedBatches(_EpochBatches):
    """``num_samples // batch_size`` batches of ``batch_size`` window indices per epoch, drawn with replacement,
    each state equally often (states: (n,) state of every window of the dataset, any labels).

    pairs: ``(session, source starts (n,), partner starts (n,))``: draw pair indices instead (uniformly) and make
    each batch a :class:`PairedBatch` of its source windows then their partners (2 x batch_size windows)."""

    def __init__(self, states: np.ndarray, num_samples: int, batch_size: int, seed: int, *,
                 pairs: tuple[int, np.ndarray, np.ndarray] | None = None, rank: int = 0, world_size: int = 1):
        import torch

        if batch_size < 1:
            raise InputError("batch_size", f"must be >= 1, got {batch_size}")
        self._check_rank(rank, world_size)
        if pairs is not None:
            states = np.zeros(len(pairs[1]), np.int64)  # one stratum: each pair is state-balanced itself
        _, inv, counts = np.unique(np.asarray(states), return_inverse=True, return_counts=True)
        self.weights = torch.as_tensor(1.0 / counts[inv], dtype=torch.float64)
        self.num_samples, self.batch_size, self.seed, self.pairs = int(num_samples), int(batch_size), int(seed), pairs

    def _count(self) -> int:
        return self.num_samples // self.batch_size

    def _all_batches(self) -> list:
        import torch

        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        idx = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g).numpy()
        batches = [idx[k:k + self.batch_size] for k in range(0, len(idx) - self.batch_size + 1, self.batch_size)]
        if self.pairs is None:
            return [b.tolist() for b in batches]
        s, act, par = self.pairs
        return [PairedBatch([(s, int(x)) for x in act[b]] + [(s, int(x)) for x in par[b]]) for b in batches]


class SessionBatchSampler(_EpochBatches):
    """Batches of indices into a :class:`WindowDataset` of many sessions, each from one session, balanced.

    batch_size: windows per batch; batches_per_session: per epoch (default: mean of floor(windows / batch_size));
    seed: with the epoch (:meth:`set_epoch`), fixes the order; rank / world_size: this process's share of the
    batches. Every batch is full: a session with fewer than ``batches_per_session * batch_size`` windows repeats
    some (fresh shuffled passes), one with more gives a distinct random subset. Batches come in rounds: each round
    holds one batch of every session in a random order, so any stretch of ``n_sessions`` batches sees every
    session once. pairs: {session index: (active starts (n,), partner starts (n,)) bins}: that session's batches
    are :class:`PairedBatch` es of batch_size // 2 pairs drawn the same way; the others' are unchanged.
    """

    def __init__(self, dataset: WindowDataset, batch_size: int = 64, batches_per_session: int | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1,
                 pairs: dict[int, tuple[np.ndarray, np.ndarray]] | None = None):
        if batch_size < 1:
            raise InputError("batch_size", f"must be >= 1, got {batch_size}")
        self._check_rank(rank, world_size)
        # sessions without windows sit out; the session index goes along for the pair table
        self.ranges = [(s, a, b) for s, (a, b) in enumerate(dataset.session_ranges) if b > a]
        if not self.ranges:
            raise InputError("sessions", f"no session has a {dataset.window}-bin window")
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.pairs = {int(s): (np.asarray(a, np.int64), np.asarray(p, np.int64))
                      for s, (a, p) in (pairs or {}).items() if len(a) > 0}
        if self.pairs and self.batch_size < 2:
            raise InputError("batch_size", f"replay pairs need batches of >= 2 windows, got {batch_size}")
        if batches_per_session is None:
            batches_per_session = round(np.mean([(b - a) // self.batch_size for _, a, b in self.ranges]))
        self.batches_per_session = max(1, int(batches_per_session))

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

    def _count(self) -> int:
        return self.batches_per_session * len(self.ranges)

    def _all_batches(self) -> list:
        rng = np.random.default_rng([self.seed, self.epoch])
        per = [self._paired_batches(s, rng) if s in self.pairs else self._session_batches(a, b, rng)
               for s, a, b in self.ranges]
        out = []
        for r in range(self.batches_per_session):  # rounds: every session once per round, in a random order
            for k in rng.permutation(len(per)):
                out.append(per[k][r])
        return out
