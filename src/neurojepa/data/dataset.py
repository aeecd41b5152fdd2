"""A prepared session on disk and the PyTorch / Lightning views the teacher and student train on.

``neurojepa prepare`` (:mod:`neurojepa.data.prepare`) writes a directory::

    qc.json          units kept/dropped, checks, states, splits, summary
    dataset.h5       /counts (n_bins, n_units) uint8|uint16, chunked + gzip; /bin_t0 (n_bins,) float64 s;
                     /split (n_bins,) codes; /labels/* one column per label; /units/* the kept-unit table;
                     /qc_units/* every unit with its rate and drop reason; /gt_latents (n_bins, D) float32 if known
    config.yaml      the resolved PrepareConfig
    provenance.json  input sha256, code version, time
    qc.png           the QC figure

:class:`PreparedSession` opens it lazily (counts stay in the file until :meth:`PreparedSession.load_counts`);
``segments(split, states)`` gives the :class:`~neurojepa.data.intervals.Intervals` windows may lie in, and
:mod:`~neurojepa.data.windows` cuts the windows the models train on.

Tables in the HDF5 file: one dataset per column; text columns are stored as int32 codes with a ``categories``
attribute (JSON list), which keeps a 1e6-bin label column small and fast to read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol, Sequence

import h5py
import numpy as np
import pandas as pd

from ..errors import InputError
from .intervals import Intervals

SPLITS = ("", "train", "val", "test")  # code 0 = excluded from every split
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------- tables in HDF5
def write_table(group: h5py.Group, df: pd.DataFrame, *, index: str | None = None, compression="gzip") -> None:
    """Store a DataFrame as one dataset per column (text as categorical codes); ``index`` names the index column."""
    frame = df.reset_index() if index else df
    group.attrs["columns"] = json.dumps([str(c) for c in frame.columns])
    group.attrs["index"] = index or ""
    for name in frame.columns:
        col = frame[name]
        kw = dict(compression=compression) if len(col) > 1024 else {}
        if col.dtype == object or isinstance(col.dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(col):
            codes, cats = pd.factorize(col.astype(object).where(col.notna(), "").astype(str), sort=False)
            ds = group.create_dataset(str(name), data=codes.astype(np.int32), **kw)
            ds.attrs["categories"] = json.dumps([str(c) for c in cats])
        elif pd.api.types.is_bool_dtype(col):  # nullable boolean: a missing value reads back as False
            group.create_dataset(str(name), data=col.to_numpy(dtype=bool, na_value=False), **kw)
        elif isinstance(col.dtype, pd.api.extensions.ExtensionDtype):  # nullable ints etc.: float with NaN
            group.create_dataset(str(name), data=col.to_numpy(dtype=float, na_value=np.nan), **kw)
        else:
            group.create_dataset(str(name), data=col.to_numpy(), **kw)


def read_table(group: h5py.Group) -> pd.DataFrame:
    """Inverse of :func:`write_table`."""
    data = {}
    for name in json.loads(group.attrs["columns"]):
        ds = group[name]
        if "categories" in ds.attrs:
            cats = np.array(json.loads(ds.attrs["categories"]) or [""], dtype=object)
            data[name] = cats[ds[()]]
        else:
            data[name] = ds[()]
    df = pd.DataFrame(data)
    index = group.attrs.get("index", "")
    return df.set_index(index) if index else df


# ----------------------------------------------------------------------------------------- the session interface
class BinnedSession(Protocol):
    """What the teacher, the student and their evaluation read of a binned session: a prepared directory
    (:class:`PreparedSession`) and counts handed in as arrays (:class:`~neurojepa.data.arrays.ArraySession`, and
    the toys built on it) both provide exactly this, so downstream code has one path and no duck typing."""

    bin_size: float            # s
    t_start: float             # s, left edge of bin 0
    n_bins: int
    n_units: int
    split: np.ndarray          # (n_bins,) "train" / "val" / "test" / ""
    labels: pd.DataFrame       # n_bins rows; at least "state"
    gt_latents: np.ndarray | None

    def load_counts(self) -> np.ndarray: ...
    def bin_times(self) -> np.ndarray: ...
    def segments(self, split: str, states: Sequence[str] | None = None) -> Intervals: ...


# ------------------------------------------------------------------------------------------- prepared session
class PreparedSession:
    """A directory written by ``neurojepa prepare``, opened lazily. See the module docstring for the layout.

    Attributes: bin_size (s), t_start (s, left edge of bin 0), n_bins, n_units, unit_ids (n_units,) int64,
    units (DataFrame of kept units, count-column order), labels (DataFrame, n_bins rows), split ((n_bins,) str
    array), gt_latents ((n_bins, D) float32 or None), qc (dict), config (dict), path (Path), bin_t0 ((n_bins,) s).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._h5: h5py.File | None = None
        self._pid = None
        h5 = self.h5
        a = h5.attrs
        self.bin_size = float(a["bin_size"])
        self.t_start = float(a["t_start"])
        self.n_bins, self.n_units = (int(x) for x in h5["counts"].shape)
        self.session_id = str(a.get("session_id", ""))
        self.units = read_table(h5["units"])
        self.unit_ids = self.units.index.to_numpy(dtype=np.int64)
        self.labels = read_table(h5["labels"])
        self.split = np.array(SPLITS, dtype=object)[h5["split"][()]]
        self.bin_t0 = h5["bin_t0"][()]
        self.qc = json.loads((self.path / "qc.json").read_text())
        self.config = _read_yaml(self.path / "config.yaml")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PreparedSession":
        path = Path(path)
        if not (path / "dataset.h5").is_file() or not (path / "qc.json").is_file():
            raise InputError(path, "not a prepared dataset (no dataset.h5 / qc.json); run `neurojepa prepare`")
        return cls(path)

    @property
    def h5(self) -> h5py.File:
        """The open HDF5 file, reopened after a fork (DataLoader workers must not share a handle)."""
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path / "dataset.h5", "r")
            self._pid = os.getpid()
        return self._h5

    def __getstate__(self):  # picklable for DataLoader workers: the handle is reopened lazily
        state = self.__dict__.copy()
        state["_h5"] = None
        return state

    @property
    def counts(self) -> h5py.Dataset:
        """(n_bins, n_units) uint8|uint16 counts, lazy: slice it (``ps.counts[a:b]``) to read."""
        return self.h5["counts"]

    def load_counts(self) -> np.ndarray:
        """(n_bins, n_units) counts in memory."""
        return self.counts[()]

    @property
    def gt_latents(self) -> np.ndarray | None:
        """(n_bins, D) float32 true latents per bin (the simulator's), None for a real recording."""
        return self.h5["gt_latents"][()] if "gt_latents" in self.h5 else None

    def bin_times(self) -> np.ndarray:
        """(n_bins,) float64 left edges (s): ``t_start + k * bin_size``."""
        return self.t_start + np.arange(self.n_bins) * self.bin_size

    def segments(self, split: str, states: Sequence[str] | None = None) -> Intervals:
        """Maximal [start, stop) bin runs of one split inside one state (optionally only ``states``)."""
        if split not in SPLITS[1:]:
            raise InputError("split", f"unknown split '{split}' (choose from train, val, test)")
        return Intervals.of_split(self.split, self.labels["state"].to_numpy(), split, states)

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __repr__(self) -> str:
        return (f"PreparedSession({str(self.path)!r}, {self.n_bins} bins x {self.n_units} units, "
                f"bin {self.bin_size * 1e3:g} ms)")


def _read_yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}  # type: ignore[return-value]
