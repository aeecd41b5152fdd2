"""A prepared session on disk and the PyTorch / Lightning views the teacher and student train on.

``neurojepa prepare`` (:mod:`neurojepa.data.prepare`) writes a directory::

    qc.json          units kept/dropped, checks, states, splits, summary
    dataset.h5       /counts (n_bins, n_units) uint8|uint16, chunked + gzip; /bin_t0 (n_bins,) float64 s;
                     /split (n_bins,) codes; /labels/* one column per label; /units/* the kept-unit table;
                     /qc_units/* every unit with its rate and drop reason; /gt_latents (n_bins, D) float32 if known
    config.yaml      the resolved PrepareConfig
    provenance.json  input sha256, code version, time
    qc.png           the QC figure

:class:`PreparedSession` opens it lazily (counts stay in the file until :meth:`PreparedSession.load_counts`).
:class:`WindowDataset` cuts fixed-length windows inside one split, never across a segment boundary (a change of
split or state), and :class:`SpikeDataModule` wraps train/val/test loaders.

Tables in the HDF5 file: one dataset per column; text columns are stored as int32 codes with a ``categories``
attribute (JSON list), which keeps a 1e6-bin label column small and fast to read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import pandas as pd

from ..errors import InputError

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


def segments_of(mask: np.ndarray, states: np.ndarray) -> list[tuple[int, int]]:
    """Maximal [start, stop) runs of True in ``mask`` (n,) that also do not change ``states`` (n,)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    cut = np.flatnonzero((mask[1:] != mask[:-1]) | (states[1:] != states[:-1])) + 1
    bounds = np.concatenate([[0], cut, [len(mask)]])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if mask[a]]


def split_segments(split: np.ndarray, state: np.ndarray, name: str, states=None) -> list[tuple[int, int]]:
    """Maximal [start, stop) bin runs of split ``name`` inside one state (optionally only ``states``).

    split, state: (n_bins,) per-bin split names and state names; the ``segments`` of every session type."""
    mask = np.asarray(split) == name
    if states is not None:
        mask &= np.isin(state, list(states))
    return segments_of(mask, state)


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

    def segments(self, split: str, states: Sequence[str] | None = None) -> list[tuple[int, int]]:
        """Maximal [start, stop) bin runs of one split inside one state (optionally only ``states``)."""
        if split not in SPLITS[1:]:
            raise InputError("split", f"unknown split '{split}' (choose from train, val, test)")
        return split_segments(self.split, self.labels["state"].to_numpy(), split, states)

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


# ------------------------------------------------------------------------------------------------ torch views
# torch and lightning are imported only when these views are used: `prepare` and the report import this module
# and should not pay ~0.5 GB and seconds of import for them.


class WindowDataset:
    """Fixed-length count windows inside one split: a map-style PyTorch dataset (``len`` and ``[i]``).

    item: ``dict(counts=(window, n_units) float32 tensor, start=int bin index, state=str)`` plus
    ``gt_latents=(window, D) float32`` when the session has ground truth. Windows start every ``stride`` bins from
    the start of each segment and never straddle a segment boundary; a segment shorter than ``window`` gives none.
    ``preload``: read all counts into memory once (default: when they take under 1 GB); otherwise each item reads
    its rows from the HDF5 file.
    """

    def __init__(self, ps: PreparedSession, split: str = "train", window: int = 64, stride: int = 16,
                 states: Sequence[str] | None = None, preload: bool | None = None):
        if window < 1 or stride < 1:
            raise InputError("window", f"window ({window}) and stride ({stride}) must be >= 1")
        self.ps, self.split, self.window, self.stride = ps, split, int(window), int(stride)
        self.segments = ps.segments(split, states)
        starts = [np.arange(a, b - self.window + 1, self.stride) for a, b in self.segments]
        self.starts = np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, np.int64)
        self._state = ps.labels["state"].to_numpy()
        if preload is None:
            preload = ps.n_bins * ps.n_units * ps.counts.dtype.itemsize < 2**30
        self._counts = ps.load_counts() if preload else None
        self._has_gt = "gt_latents" in ps.h5
        self._gt = ps.gt_latents if preload and self._has_gt else None

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict:
        import torch

        if not -len(self) <= i < len(self):
            raise IndexError(i)
        s = int(self.starts[i])
        e = s + self.window
        counts = self._counts[s:e] if self._counts is not None else self.ps.counts[s:e]
        item = {"counts": torch.from_numpy(counts.astype(np.float32)), "start": s, "state": str(self._state[s])}
        if self._has_gt:
            gt = self._gt[s:e] if self._gt is not None else self.ps.h5["gt_latents"][s:e]
            item["gt_latents"] = torch.from_numpy(np.asarray(gt, dtype=np.float32))
        return item


def _make_datamodule_class():
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader

    class SpikeDataModule(pl.LightningDataModule):
        """train/val/test loaders of :class:`WindowDataset` over one prepared directory.

        The train loader shuffles with a generator seeded by ``seed`` (same order on every run); val/test keep
        time order. Batches: ``counts`` (batch, window, n_units) float32, ``start`` (batch,) int64, ``state`` list.
        """

        def __init__(self, path: str | os.PathLike, window: int = 64, stride: int = 16, batch_size: int = 64,
                     states: Sequence[str] | None = None, seed: int = 0, num_workers: int = 0):
            super().__init__()
            self.path, self.window, self.stride = Path(path), window, stride
            self.batch_size, self.states, self.seed, self.num_workers = batch_size, states, seed, num_workers
            self.ps: PreparedSession | None = None
            self.datasets: dict[str, WindowDataset] = {}

        def setup(self, stage: str | None = None) -> None:
            if self.ps is None:
                self.ps = PreparedSession.load(self.path)
            for split in ("train", "val", "test"):
                if split not in self.datasets:
                    self.datasets[split] = WindowDataset(self.ps, split, self.window, self.stride, self.states)

        def _loader(self, split: str, shuffle: bool) -> DataLoader:
            self.setup()
            gen = torch.Generator().manual_seed(self.seed) if shuffle else None
            return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle, generator=gen,
                              num_workers=self.num_workers)

        def train_dataloader(self) -> DataLoader:
            return self._loader("train", True)

        def val_dataloader(self) -> DataLoader:
            return self._loader("val", False)

        def test_dataloader(self) -> DataLoader:
            return self._loader("test", False)

    SpikeDataModule.__module__ = __name__
    return SpikeDataModule


def __getattr__(name: str):
    """``SpikeDataModule`` is built on first access (PEP 562), so importing this module does not import lightning."""
    if name == "SpikeDataModule":
        cls = _make_datamodule_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
