"""Rows of a feature matrix, in blocks of bounded size: how every metric reads its features.

A metric's features ``x`` are either an ``(n_bins, D)`` array or a *row source*: any object with ``shape``
(``(n_bins, D)``) and ``take(rows) -> (len(rows), D) array`` that computes rows on demand (the ``smoothing`` baseline's
smoothed counts of a full-size session are 870k bins x 1,100 units, 3.8 GB as float32, and are never held whole:
``teacher/baselines.SmoothedCounts``). Metrics touch features only through :func:`take_rows` and
:func:`row_blocks`, so their memory is one block (``BLOCK_BYTES`` of float64) whatever the session's length.

For an array whose selected rows fit in one block the computation is the one-piece computation, operation for
operation; longer selections are reduced block by block (sums in another order: differences ~1e-12 relative).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

BLOCK_BYTES = 64 * 2**20  # float64 bytes per block (64 MB)


def take_rows(x, rows: np.ndarray) -> np.ndarray:
    """``x[rows]`` for an array, ``x.take(rows)`` for a row source; rows: int indices."""
    rows = np.asarray(rows, dtype=np.int64)
    return x[rows] if isinstance(x, np.ndarray) else np.asarray(x.take(rows))


def as_rows(selection, n: int) -> np.ndarray:
    """Sorted int row indices from a boolean mask of length n, an index array, or None (all rows)."""
    if selection is None:
        return np.arange(n)
    sel = np.asarray(selection)
    return np.flatnonzero(sel) if sel.dtype == bool else sel.astype(np.int64)


def block_rows(width: int, block_bytes: int | None = None) -> int:
    """Rows per block for features of ``width`` columns (at least 1,024); block_bytes: default ``BLOCK_BYTES``."""
    return max(1024, (block_bytes or BLOCK_BYTES) // (8 * max(1, int(width))))


def row_blocks(x, rows: np.ndarray, block_bytes: int | None = None, width: int | None = None
               ) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(positions, float64 block)`` for consecutive blocks of ``rows``: ``positions`` is the slice of
    ``rows`` the block holds, the block is ``x[rows[positions]]`` as float64. width: the float64 values per row
    the caller makes of a block (default: x's columns), which sets the rows per block."""
    step = block_rows(width or x.shape[1], block_bytes)
    for i in range(0, len(rows), step):
        pos = slice(i, min(i + step, len(rows)))
        yield pos, np.asarray(take_rows(x, rows[pos]), dtype=np.float64)


def column_mean_std(x, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and (population) standard deviations of x over ``rows``, two passes (as ``np.std``)."""
    blocks = list(range(0, len(rows), block_rows(x.shape[1])))
    if len(blocks) <= 1:
        b = np.asarray(take_rows(x, rows), dtype=np.float64)
        return b.mean(0), b.std(0)
    total = np.zeros(x.shape[1])
    for _, b in row_blocks(x, rows):
        total += b.sum(0)
    mu = total / len(rows)
    sq = np.zeros(x.shape[1])
    for _, b in row_blocks(x, rows):
        sq += ((b - mu) ** 2).sum(0)
    return mu, np.sqrt(sq / len(rows))


class ColumnView:
    """Some columns of a (n_bins, U) array without copying them: ``view[a:b]`` and ``view.take(rows)`` return
    ``array[...][:, columns]`` for just those rows (the teacher's held-in counts of a full-size session would be
    another 0.96 GB uint8 copy of the 1.2 GB session)."""

    def __init__(self, array: np.ndarray, columns: np.ndarray):
        self.array, self.columns = array, np.asarray(columns, dtype=np.int64)
        self.shape = (array.shape[0], len(self.columns))
        self.dtype = array.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):  # a view of the rows, then the columns
            return self.array[rows][:, self.columns]
        return self.take(rows)

    def take(self, rows) -> np.ndarray:
        """The selected rows' columns, without first copying the rows' other columns."""
        rows = np.asarray(rows)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        return self.array[np.ix_(rows, self.columns)]

    def mean(self, axis: int = 0) -> np.ndarray:
        """Column means (axis 0 only), accumulated in float64 without a float copy of the array."""
        if axis != 0:
            raise ValueError("ColumnView.mean: axis 0 only")
        return self.array.mean(0)[self.columns]
