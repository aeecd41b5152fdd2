"""``STUDENT_DIR/spikes.npz``: the student's spikes on the held-out chunks its firing statistics are computed on.

Which bins: evaluation (evaluate.py, ``firing_statistics``) simulates up to ``eval_spike_chunks`` chunks of
``eval_chunk`` bins that lie wholly in test blocks (of the test states), evenly spaced over them, each after
``eval_warmup`` bins of its own past input (warm-up, not kept). Those spikes -- the same ones behind ``rate_hz_median``,
``cv_isi_median`` and the report's raster -- are stored sparsely (compressed npz, no pickle)::

    chunk_start_bin  (B,) int64    first bin of each chunk, an index into the prepared dataset's bins
    chunk_bins       ()   int      bins per chunk
    substeps         ()   int      dt steps per bin;  dt () float s;  bin_size () float s
    t_start          ()   float s  left edge of bin 0 of the prepared dataset (the recording's clock)
    n_neurons, n_exc ()   int      neurons 0 .. n_exc-1 are excitatory, the rest inhibitory
    spike_chunk, spike_step, spike_neuron  (n_spikes,) int32: chunk index, dt step within the chunk, neuron;
                     sorted by (chunk, step, neuron)

A spike in step ``s`` of chunk ``c`` happened during [t0 + s dt, t0 + (s + 1) dt) with
``t0 = t_start + chunk_start_bin[c] * bin_size``; :meth:`StudentSpikes.spike_times` places it at the step's centre,
so that any grid of bin or step edges puts it back in its own bin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, atomic_path

SPIKES_FILE = "spikes.npz"


@dataclass
class StudentSpikes:
    """The content of ``spikes.npz`` (see the module docstring for every field)."""

    chunk_start_bin: np.ndarray
    chunk_bins: int
    substeps: int
    dt: float
    bin_size: float
    t_start: float
    n_neurons: int
    n_exc: int
    spike_chunk: np.ndarray
    spike_step: np.ndarray
    spike_neuron: np.ndarray

    @property
    def n_spikes(self) -> int:
        return len(self.spike_neuron)

    def chunk_intervals(self) -> np.ndarray:
        """(B, 2) float64 s: [start, stop) of each simulated chunk on the recording's clock."""
        t0 = self.t_start + self.chunk_start_bin * self.bin_size
        return np.stack([t0, t0 + self.chunk_bins * self.bin_size], axis=1)

    def spike_times(self) -> list[np.ndarray]:
        """Per neuron (n_neurons lists), float64 s: the centre of the dt step of each spike, sorted."""
        t = (self.t_start + self.chunk_start_bin[self.spike_chunk] * self.bin_size
             + (self.spike_step + 0.5) * self.dt)
        order = np.lexsort((t, self.spike_neuron))
        ends = np.cumsum(np.bincount(self.spike_neuron, minlength=self.n_neurons))
        return np.split(t[order], ends[:-1])

    def dense(self) -> np.ndarray:
        """(B, chunk_bins * substeps, n_neurons) uint8 of 0/1, as the simulation returned them."""
        out = np.zeros((len(self.chunk_start_bin), self.chunk_bins * self.substeps, self.n_neurons), np.uint8)
        out[self.spike_chunk, self.spike_step, self.spike_neuron] = 1
        return out


def write_student_spikes(path: str | Path, spikes: np.ndarray, chunk_start_bin: np.ndarray, *, substeps: int,
                         dt: float, bin_size: float, t_start: float, n_exc: int) -> Path:
    """Write spikes (B, chunk_bins * substeps, N) of 0/1 from chunks starting at bins chunk_start_bin (B,),
    sparsely and atomically. Returns the path."""
    spikes = np.asarray(spikes)
    starts = np.asarray(chunk_start_bin, dtype=np.int64)
    if spikes.ndim != 3 or len(spikes) != len(starts) or spikes.shape[1] % substeps:
        raise ValueError(f"spikes of shape {spikes.shape} do not fit {len(starts)} chunks of whole bins of "
                         f"{substeps} steps")
    c, s, n = (a.astype(np.int32) for a in np.nonzero(spikes))  # row-major: sorted by (chunk, step, neuron)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, chunk_start_bin=starts, chunk_bins=spikes.shape[1] // substeps,
                                substeps=int(substeps), dt=float(dt), bin_size=float(bin_size),
                                t_start=float(t_start), n_neurons=spikes.shape[2], n_exc=int(n_exc),
                                spike_chunk=c, spike_step=s, spike_neuron=n)
    return Path(path)


def read_student_spikes(path: str | Path) -> StudentSpikes:
    """Read ``spikes.npz`` (InputError if it is missing or not one)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no student spikes saved (the student stage that made this directory predates them)")
    with np.load(path, allow_pickle=False) as z:
        try:
            return StudentSpikes(chunk_start_bin=z["chunk_start_bin"], chunk_bins=int(z["chunk_bins"]),
                                 substeps=int(z["substeps"]), dt=float(z["dt"]), bin_size=float(z["bin_size"]),
                                 t_start=float(z["t_start"]), n_neurons=int(z["n_neurons"]), n_exc=int(z["n_exc"]),
                                 spike_chunk=z["spike_chunk"], spike_step=z["spike_step"],
                                 spike_neuron=z["spike_neuron"])
        except KeyError as err:
            raise InputError(path, f"not a student spikes file (no {err})") from None
