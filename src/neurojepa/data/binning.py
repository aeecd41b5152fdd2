"""Spike counts in fixed time bins (10 ms by default), exact, fast and memory-lean.

Convention (the one every phase uses): bins are left-closed ``[t0 + k*dt, t0 + (k+1)*dt)`` for
``k = 0 .. n_bins-1`` with ``n_bins = floor((t_stop - t_start) / dt + 1e-9)``: only whole bins, a partial bin
at the end of the range is dropped (the ``1e-9`` forgives the float error of e.g. ``(0.3 - 0.0) / 0.1``).
The edge values are ``t_start + np.arange(n_bins + 1) * bin_size`` (:func:`bin_edges`), and the counts equal,
bit for bit, a per-unit ``np.histogram(times[times < edges[-1]], bins=edges)`` (``np.histogram`` closes its last
bin on the right; dropping spikes at ``edges[-1]`` makes every bin left-closed). A spike exactly on an edge
belongs to the bin that starts there. Spikes outside ``[edges[0], edges[-1])`` (and NaN) are ignored.

How a spike finds its bin: ``k = floor((t - t0) / dt)`` and then one comparison with the stored edge values
``edges[k]``/``edges[k + 1]`` corrects the rare off-by-one that float rounding of the division causes. Comparing
with the very edge values that ``np.histogram`` would use is what makes the result identical, not merely close.

Three forms, one kernel:

- :func:`bin_spikes` -> dense ``(n_bins, n_units)`` counts for a window (training windows, one time chunk);
- :func:`bin_spikes_sparse` -> ``scipy.sparse.csr_matrix`` ``(n_bins, n_units)`` for a whole session: about
  6 bytes per non-empty (bin, unit) instead of 2 bytes per (bin, unit); at 10 ms and ~5 Hz, 95% of bins are
  empty, so a 2,000-unit 2.5 h session takes ~0.6 GB instead of 3.6 GB dense (and 29 GB as a float64 cube);
  rows are bins, so a time window is a cheap row slice;
- :func:`iter_binned` -> ``(first_bin, dense chunk)`` pairs read chunk by chunk from a lazy
  :class:`~neurojepa.data.session.SpikeSource` (what the dataset writer streams into chunked HDF5).
  Chunks use the global edges, so concatenating them equals one call over the whole range.

Count dtype: ``uint16`` (a 10 ms bin would need a 6.5 MHz unit to overflow it); if some bin really holds more
than 65,535 spikes (duplicated timestamps) the whole result is redone in ``uint32``, never silently wrapped.

The kernels are numba-compiled (``cache=True``); :func:`bin_spikes_numpy` is the pure-numpy path (one
``np.bincount`` over all units) used as the reference in tests and where numba is unavailable.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from .session import BIN_SIZE as DEFAULT_BIN_SIZE
from .session import SpikeTrains

try:  # numba is a core dependency; the guard only keeps the numpy path usable without it
    import numba

    _njit = numba.njit(cache=True, nogil=True)
except ImportError:  # pragma: no cover
    numba = None
    _njit = None

_U16_MAX = np.iinfo(np.uint16).max


# ------------------------------------------------------------------------------------------------ edges
def bin_edges(t_start: float, t_stop: float, bin_size: float = DEFAULT_BIN_SIZE) -> np.ndarray:
    """(n_bins + 1,) float64 edges ``t_start + k * bin_size`` (s); only whole bins fit in ``[t_start, t_stop]``."""
    bin_size = float(bin_size)
    if not math.isfinite(bin_size) or bin_size <= 0:
        raise InputError("bin_size", f"must be a positive finite number of seconds, got {bin_size!r}")
    t_start, t_stop = float(t_start), float(t_stop)
    if not (math.isfinite(t_start) and math.isfinite(t_stop)) or t_stop <= t_start:
        raise InputError("time range", f"[{t_start!r}, {t_stop!r}) is empty or not finite")
    n_bins = int(math.floor((t_stop - t_start) / bin_size + 1e-9))
    if n_bins < 1:
        raise InputError("time range", f"[{t_start}, {t_stop}) is shorter than one bin of {bin_size} s")
    return t_start + np.arange(n_bins + 1) * bin_size


def _check_edges(edges: np.ndarray) -> np.ndarray:
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise InputError("bin edges", "need at least two finite, strictly increasing edges")
    return edges


# ------------------------------------------------------------------------------------------------ kernels
# Both kernels walk time in chunks of bins and, inside a chunk, each unit's sorted spikes from a per-unit cursor:
# every spike is read once, in order, and all writes of a chunk land in a small (cache-sized) part of the output.
# Walking the whole session unit by unit instead scatters writes over the entire output (2-3x slower).
_CHUNK_CELLS = 1 << 22  # bins x units per chunk (4M: ~10-20% faster than 1M at full size; buffers touched only up to nnz)


def _chunk_bins(n_bins: int, n_units: int) -> int:
    return max(1, min(n_bins, _CHUNK_CELLS // max(n_units, 1)))


def _near_edge_tolerance(edges: np.ndarray) -> float:
    """Fraction of a bin inside which the fast guess is checked against the stored edges.

    The guess ``(t - t0) * (1/dt)`` and the stored edge ``t0 + k*dt`` each carry a few ulps of ``max|t|``; far
    from that, the guess's floor is exact. 64 ulps (plus a floor of 1e-9) is a generous margin.
    """
    dt = (edges[-1] - edges[0]) / (len(edges) - 1)
    scale = max(abs(float(edges[0])), abs(float(edges[-1])), float(dt))
    return max(1e-9, 64 * np.finfo(np.float64).eps * scale / float(dt))


if _njit is not None:

    @_njit
    def _bin_of(t, t0, inv_dt, tol, edges, b0, b1):  # pragma: no cover - compiled
        """Bin index of t, known to lie in [edges[b0], edges[b1]); exact with respect to the stored edges."""
        x = (t - t0) * inv_dt
        k = int(x)
        f = x - k
        if f < tol or f > 1.0 - tol or k < b0 or k >= b1:
            # near an edge (or a guess outside the chunk): let the stored edges decide, as np.histogram does
            if k < b0:
                k = b0
            elif k > b1 - 1:
                k = b1 - 1
            while t < edges[k]:
                k -= 1
            while t >= edges[k + 1]:
                k += 1
        return k

    @_njit
    def _walk_start(times, offsets, edges):  # pragma: no cover - compiled
        """(n_bins, n_units, t0, 1/dt, cursors): each unit's cursor at its first spike >= edges[0]."""
        n_bins = len(edges) - 1
        n_units = len(offsets) - 1
        cur = np.empty(n_units, dtype=np.int64)
        for u in range(n_units):
            cur[u] = offsets[u] + np.searchsorted(times[offsets[u] : offsets[u + 1]], edges[0])
        return n_bins, n_units, edges[0], n_bins / (edges[-1] - edges[0]), cur

    @_njit
    def _dense_kernel(times, offsets, edges, tol, chunk, out):  # pragma: no cover - compiled
        """Add counts into out (n_bins, n_units). Returns 0 ok, 1 a count would overflow, 2 unsorted spikes."""
        n_bins, n_units, t0, inv_dt, cur = _walk_start(times, offsets, edges)
        limit = np.iinfo(out.dtype).max
        for b0 in range(0, n_bins, chunk):
            b1 = min(b0 + chunk, n_bins)
            hi = edges[b1]
            for u in range(n_units):
                i = cur[u]
                end = offsets[u + 1]
                while i < end and times[i] < hi:
                    t = times[i]
                    if i > offsets[u] and t < times[i - 1]:
                        return 2
                    k = _bin_of(t, t0, inv_dt, tol, edges, b0, b1)
                    if out[k, u] == limit:
                        return 1
                    out[k, u] += 1
                    i += 1
                cur[u] = i
        return 0

    @_njit
    def _csr_kernel(times, offsets, edges, tol, chunk, indptr, indices, data):  # pragma: no cover - compiled
        """Fill a CSR (rows = bins, units ascending within a row). Returns (status, nnz) like _dense_kernel."""
        n_bins, n_units, t0, inv_dt, cur = _walk_start(times, offsets, edges)
        limit = np.iinfo(data.dtype).max
        cap = chunk * n_units  # a chunk holds at most one entry per (bin, unit); int32 buffers stay in cache
        buf_k = np.empty(min(cap, len(data) + 1), dtype=np.int32)
        buf_u = np.empty(len(buf_k), dtype=np.int32)
        buf_c = np.empty(len(buf_k), dtype=np.int32)
        row_pos = np.empty(chunk + 1, dtype=np.int64)
        base = 0
        indptr[0] = 0
        for b0 in range(0, n_bins, chunk):
            b1 = min(b0 + chunk, n_bins)
            hi = edges[b1]
            row_pos[:] = 0
            m = 0
            for u in range(n_units):
                i = cur[u]
                end = offsets[u + 1]
                prev = -1
                while i < end and times[i] < hi:
                    t = times[i]
                    if i > offsets[u] and t < times[i - 1]:
                        return 2, base
                    k = _bin_of(t, t0, inv_dt, tol, edges, b0, b1) - b0
                    if k == prev:
                        buf_c[m - 1] += 1
                    else:
                        buf_k[m] = k
                        buf_u[m] = u
                        buf_c[m] = 1
                        row_pos[k + 1] += 1
                        m += 1
                        prev = k
                    i += 1
                cur[u] = i
            for j in range(b1 - b0):  # row_pos[j] becomes the first slot of local row j
                row_pos[j + 1] += row_pos[j]
                indptr[b0 + j + 1] = base + row_pos[j + 1]
            for e in range(m):  # units were visited in order, so columns ascend within each row
                c = buf_c[e]
                if c > limit:
                    return 1, base
                p = base + row_pos[buf_k[e]]
                row_pos[buf_k[e]] += 1
                indices[p] = buf_u[e]
                data[p] = c
            base += m
        return 0, base


def _as_arrays(trains: SpikeTrains) -> tuple[np.ndarray, np.ndarray]:
    times = np.ascontiguousarray(trains.times, dtype=np.float64)
    offsets = np.ascontiguousarray(trains.offsets, dtype=np.int64)
    return times, offsets


def _raise_unsorted() -> None:
    raise InputError("spike times", "not sorted within each unit (SpikeTrains requires sorted trains)")


# ------------------------------------------------------------------------------------------------ public
def bin_spikes_at(trains: SpikeTrains, edges: np.ndarray) -> np.ndarray:
    """Counts (n_bins, n_units) uint16 (uint32 on overflow) of each unit in the left-closed bins of ``edges`` (s).

    ``edges`` must be uniformly spaced up to float rounding (a slice of :func:`bin_edges`). Use this with a slice
    of the global edges to bin a time chunk so that its bins are bit-identical to the whole-range ones.
    """
    edges = _check_edges(edges)
    if _njit is None:  # pragma: no cover
        return _bincount_counts(trains, edges)
    times, offsets = _as_arrays(trains)
    n_bins, n_units = len(edges) - 1, len(offsets) - 1
    for dtype in (np.uint16, np.uint32, np.uint64):
        out = np.zeros((n_bins, n_units), dtype=dtype)
        status = _dense_kernel(times, offsets, edges, _near_edge_tolerance(edges), _chunk_bins(n_bins, n_units), out)
        if status == 2:
            _raise_unsorted()
        if status == 0:
            return out
    raise AssertionError("unreachable: uint64 counts overflowed")  # pragma: no cover


def bin_spikes(
    trains: SpikeTrains, t_start: float, t_stop: float, bin_size: float = DEFAULT_BIN_SIZE
) -> np.ndarray:
    """Counts (n_bins, n_units) uint16 in bins ``[t_start + k*bin_size, t_start + (k+1)*bin_size)`` (s).

    Columns follow ``trains.unit_ids``; spikes outside the whole bins are ignored. Equal to a per-unit
    ``np.histogram(t[t < edges[-1]], bins=edges)`` with ``edges = bin_edges(t_start, t_stop, bin_size)``.
    """
    return bin_spikes_at(trains, bin_edges(t_start, t_stop, bin_size))


def bin_spikes_sparse(
    trains: SpikeTrains, t_start: float, t_stop: float, bin_size: float = DEFAULT_BIN_SIZE
) -> sp.csr_matrix:
    """Counts as a CSR matrix (n_bins, n_units): data uint16 (uint32 on overflow), int32 indices when they fit.

    Same counts as :func:`bin_spikes` (``.toarray()`` equals it). Memory: at most 6 bytes per spike in range
    plus 4-8 bytes per bin; the arrays are sized by the spikes in range and the matrix keeps views of them.
    """
    edges = bin_edges(t_start, t_stop, bin_size)
    n_bins, n_units = len(edges) - 1, len(trains)
    if _njit is None:  # pragma: no cover
        return sp.csr_matrix(_bincount_counts(trains, edges))
    times, offsets = _as_arrays(trains)
    cursors = [np.searchsorted(times[offsets[u] : offsets[u + 1]], edges[[0, -1]]) for u in range(n_units)]
    n_inside = int(sum(int(hi - lo) for lo, hi in cursors))  # an upper bound of the non-empty cells
    idx = np.int32 if max(n_inside, n_units, n_bins) < np.iinfo(np.int32).max else np.int64
    tol, chunk = _near_edge_tolerance(edges), _chunk_bins(n_bins, n_units)
    for dtype in (np.uint16, np.uint32, np.uint64):
        indptr = np.empty(n_bins + 1, dtype=idx)
        indices = np.empty(n_inside, dtype=idx)
        data = np.empty(n_inside, dtype=dtype)
        status, nnz = _csr_kernel(times, offsets, edges, tol, chunk, indptr, indices, data)
        if status == 2:
            _raise_unsorted()
        if status == 0:
            return sp.csr_matrix((data[:nnz], indices[:nnz], indptr), shape=(n_bins, n_units), copy=False)
    raise AssertionError("unreachable: uint64 counts overflowed")  # pragma: no cover


def iter_binned(
    session_or_source,
    unit_ids: Sequence[int] | None,
    t_start: float,
    t_stop: float,
    bin_size: float = DEFAULT_BIN_SIZE,
    chunk_s: float = 60.0,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_bin, counts)`` with counts (n_chunk_bins, n_units) uint16, reading spikes chunk by chunk.

    ``session_or_source`` is a :class:`~neurojepa.data.session.Session` or a ``SpikeSource``; only the spikes of
    one chunk (``chunk_s`` seconds, rounded to whole bins) are in memory at a time. Bin ``first_bin + j`` of a
    chunk is bin ``first_bin + j`` of ``bin_edges(t_start, t_stop, bin_size)``.
    """
    edges = bin_edges(t_start, t_stop, bin_size)
    if not (math.isfinite(chunk_s) and chunk_s > 0):
        raise InputError("chunk_s", f"must be a positive number of seconds, got {chunk_s!r}")
    read = session_or_source.spike_times if hasattr(session_or_source, "spike_times") else session_or_source.read
    n_bins = len(edges) - 1
    step = max(1, int(round(chunk_s / float(bin_size))))
    for b0 in range(0, n_bins, step):
        b1 = min(b0 + step, n_bins)
        # the source returns t0 <= t < t1 with the very edge values used for binning: nothing lost or doubled
        chunk = read(unit_ids, float(edges[b0]), float(edges[b1]))
        yield b0, bin_spikes_at(chunk, edges[b0 : b1 + 1])


# ------------------------------------------------------------------------------------------------ numpy path
def _bincount_counts(trains: SpikeTrains, edges: np.ndarray) -> np.ndarray:
    times = np.asarray(trains.times, dtype=np.float64)
    n_bins, n_units = len(edges) - 1, len(trains)
    unit = trains.unit_index()
    inside = (times >= edges[0]) & (times < edges[-1])
    t, unit = times[inside], unit[inside]
    dt = (edges[-1] - edges[0]) / n_bins
    k = np.clip(np.floor((t - edges[0]) / dt).astype(np.int64), 0, n_bins - 1)
    # one correction step each way is enough: the division is off by at most one bin
    k -= t < edges[k]
    k += t >= edges[k + 1]
    flat = np.bincount(k * n_units + unit, minlength=n_bins * n_units)
    dtype = np.uint16 if (flat.max(initial=0) <= _U16_MAX) else np.uint32
    return flat.reshape(n_bins, n_units).astype(dtype)


def bin_spikes_numpy(
    trains: SpikeTrains, t_start: float, t_stop: float, bin_size: float = DEFAULT_BIN_SIZE
) -> np.ndarray:
    """Pure-numpy :func:`bin_spikes` (one ``np.bincount`` over all units): the reference path, ~3x the memory."""
    return _bincount_counts(trains, bin_edges(t_start, t_stop, bin_size))
