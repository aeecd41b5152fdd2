"""Intervals of bins: the one type for "where may a window lie" (split blocks inside one brain state).

Every consumer of a session's time structure uses :class:`Intervals`: the prepared dataset's and the array
session's ``segments(split, states)``, the window dataset (:mod:`~neurojepa.data.windows`), the teacher's replay
pairing and the student's training blocks. An interval is a maximal ``[start, stop)`` run of bins that belong to one
split and do not change state, and it knows its state, so nothing downstream re-derives states per window.

Iterating gives ``(start, stop)`` pairs of Python ints, so ``for a, b in intervals`` reads as it did for the lists
of tuples this type replaced; ``intervals == [(a, b), ...]`` compares the bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np


@dataclass(frozen=True, eq=False)
class Intervals:
    """``bounds`` (n, 2) int64 ``[start, stop)`` bins, in time order; ``states`` (n,) the state name of each."""

    bounds: np.ndarray
    states: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "bounds", np.asarray(self.bounds, dtype=np.int64).reshape(-1, 2))
        object.__setattr__(self, "states", np.asarray(self.states, dtype=object).astype(str))
        if len(self.states) != len(self.bounds):
            raise ValueError(f"Intervals: {len(self.bounds)} bounds but {len(self.states)} states")

    # ---------------------------------------------------------------------------------------------- building
    @classmethod
    def runs(cls, mask: np.ndarray, state: np.ndarray | None = None) -> "Intervals":
        """Maximal runs of True in ``mask`` (n,); with ``state`` (n,) a run is also cut where the state changes
        (without it every interval's state is ``""``)."""
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return cls.empty()
        change = mask[1:] != mask[:-1]
        if state is not None:
            state = np.asarray(state)
            change = change | (state[1:] != state[:-1])
        bounds = np.concatenate([[0], np.flatnonzero(change) + 1, [len(mask)]])
        starts, stops = bounds[:-1], bounds[1:]
        keep = mask[starts]
        starts, stops = starts[keep], stops[keep]
        names = np.asarray(state)[starts].astype(str) if state is not None else np.full(len(starts), "")
        return cls(np.stack([starts, stops], axis=1), names)

    @classmethod
    def of_split(cls, split: np.ndarray, state: np.ndarray | None, name: str,
                 states: Sequence[str] | None = None) -> "Intervals":
        """Runs of ``split == name`` inside one state (``state`` (n,) per-bin names; None: runs of the split only),
        optionally only of ``states``."""
        mask = np.asarray(split).astype(str) == name
        if states is not None and state is not None:
            mask &= np.isin(np.asarray(state).astype(str), list(states))
        return cls.runs(mask, state)

    @classmethod
    def empty(cls) -> "Intervals":
        return cls(np.zeros((0, 2), np.int64), np.zeros(0, dtype=object))

    # ------------------------------------------------------------------------------------------------- using
    def keep(self, states: Sequence[str] | None) -> "Intervals":
        """The intervals whose state is in ``states`` (all of them for None or an empty list)."""
        if not states:
            return self
        m = np.isin(self.states, list(states))
        return Intervals(self.bounds[m], self.states[m])

    def longer_than(self, length: int) -> "Intervals":
        """The intervals holding at least one window of ``length`` bins."""
        m = self.lengths >= length
        return Intervals(self.bounds[m], self.states[m])

    @property
    def lengths(self) -> np.ndarray:
        return self.bounds[:, 1] - self.bounds[:, 0]

    def window_starts(self, length: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
        """(first bins (n,) int64, interval index (n,) int64) of every window of ``length`` bins starting each
        ``stride`` bins from an interval's start and ending inside it, in time order."""
        per = np.maximum(0, (self.lengths - length) // stride + 1)
        which = np.repeat(np.arange(len(self)), per)
        first = np.concatenate([[0], np.cumsum(per)])[:-1]
        offset = np.arange(int(per.sum())) - np.repeat(first, per)
        return (self.bounds[which, 0] + offset * stride).astype(np.int64), which.astype(np.int64)

    def bins(self, trim_end: int = 0) -> np.ndarray:
        """Every bin index inside an interval (without its last ``trim_end`` bins), in time order."""
        parts = [np.arange(a, b - trim_end) for a, b in self if b - a > trim_end]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.bounds)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((int(a), int(b)) for a, b in self.bounds)

    def __getitem__(self, i: int) -> tuple[int, int]:
        a, b = self.bounds[i]
        return int(a), int(b)

    def __eq__(self, other) -> bool:
        if isinstance(other, Intervals):
            return self.tolist() == other.tolist() and list(self.states) == list(other.states)
        return self.tolist() == [tuple(x) for x in other]

    __hash__ = None  # mutable arrays inside

    def tolist(self) -> list[tuple[int, int]]:
        return list(self)

    def __repr__(self) -> str:
        return f"Intervals({len(self)} runs, {int(self.lengths.sum())} bins)"
