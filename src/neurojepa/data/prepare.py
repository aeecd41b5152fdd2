"""``neurojepa prepare``: one recording -> a QC'd, binned, labelled, split dataset directory.

Steps (all inside one temporary directory renamed into place at the end, so a failure leaves nothing behind):

1. **QC** the units (:mod:`neurojepa.data.qc`).
2. **Time grid**: left-closed bins ``t_start + k * bin_size`` (:func:`~neurojepa.data.binning.bin_edges`) over the
   selected time range (default: the whole recording), cropped to the first..last bin of the selected states.
   The grid is uniform and never skips time: bins between two selected states (e.g. the gabor block between
   VBN's active and passive blocks when ``states=[active, passive]``) are kept with split ``''``; so
   ``bin_t0 == bin_times()``. Labels per bin come from :func:`~neurojepa.data.labels.bin_labels`.
3. **Splits**: inside each selected state, the state's bins are cut into contiguous blocks of ``split_block_s``
   (a block never crosses a state change; the last block of a run may be shorter). The blocks of each state are
   shuffled with ``np.random.default_rng([seed, crc32(state)])`` and dealt out by ``split_fractions``
   (train, val, test; default 0.7/0.1/0.2): ``n_val = round(0.1 n)``, ``n_test = round(0.2 n)``, the rest train,
   and when a state has >= 3 blocks every split gets at least one (taken from train). Never random bins: windows
   of neighbouring bins would leak between splits. The per-bin split is stored, so later phases read it, never
   recompute it.
4. **Counts**: the kept units are binned chunk by chunk (``chunk_s`` of spikes in memory at a time,
   :func:`~neurojepa.data.binning.iter_binned`) into a chunked, gzip-compressed ``uint8`` HDF5 dataset (``uint16``
   when a bin could exceed 255 spikes: bins over 0.25 s, or if one actually does). Ground-truth latents per bin
   (the sample at each bin centre) are written the same way.
5. **Checks and report**: :mod:`neurojepa.data.checks`, ``qc.json``, ``config.yaml``, ``provenance.json`` (input
   sha256 streamed in 1 MB blocks, or for a URL the server's size, ETag and Last-Modified; package version + git
   commit), and ``qc.png`` when the caller passes ``draw_qc``.

The QC figure: this module writes data only and imports nothing above :mod:`neurojepa.data` (imports flow one way,
data <- teacher/student <- report <- pipeline <- cli/api). The figure is drawn by the report layer
(:func:`neurojepa.report.qc_figure.plot_qc`), which the callers above pass in as ``draw_qc(prepared_dir, png)``
(the CLI's ``prepare``, the pipeline's prepare stage, :func:`neurojepa.data.parallel.prepare_many`). It runs inside
the temporary directory, after every data file is written and before the rename, so ``qc.png`` is part of the
atomic result exactly as the data files are. ``figure=false`` (:class:`PrepareConfig`) switches it off; without
``draw_qc`` no figure is drawn.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import h5py
import numpy as np
import pandas as pd

from ..config import config_hash, save_config
from ..errors import InputError, atomic_path
from ..version import __version__
from .checks import CheckConfig, check_block_timing, check_rates, check_silent_gaps, check_spike_times
from .dataset import FORMAT_VERSION, SPLITS, write_table
from .intervals import Intervals
from .qc import QCConfig, select_units
from .session import BIN_SIZE

log = logging.getLogger(__name__)

# draw_qc(prepared_dir, png_path): draws the QC figure of the prepared files in prepared_dir into png_path
QCFigure = Callable[[Path, Path], object]


@dataclass
class PrepareConfig:
    """Options of ``neurojepa prepare`` (YAML file and/or ``key=value`` overrides, e.g. ``qc.min_rate_hz=0.5``)."""

    bin_size: float = BIN_SIZE  # s (10 ms)
    t_start: Optional[float] = None  # s; default: start of the recording
    t_stop: Optional[float] = None  # s; default: end of the recording
    states: Optional[list[str]] = None  # default: every state that has bins
    split_block_s: float = 60.0  # s, length of the contiguous split blocks
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])  # train, val, test
    seed: int = 0  # fixes the split assignment
    chunk_s: float = 60.0  # s of spikes binned at a time (memory)
    compression_level: int = 4  # gzip level of the HDF5 datasets
    figure: bool = True  # write qc.png
    qc: QCConfig = field(default_factory=QCConfig)
    checks: CheckConfig = field(default_factory=CheckConfig)  # data-quality checks (reported, never fatal)


def validate(cfg: PrepareConfig) -> None:
    """Reject impossible options with one line before any file is touched."""
    for name in ("bin_size", "split_block_s", "chunk_s"):
        v = getattr(cfg, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise InputError(name, f"must be a positive finite number of seconds, got {v!r}")
    for name in ("t_start", "t_stop"):
        v = getattr(cfg, name)
        if v is not None and not math.isfinite(v):
            raise InputError(name, f"must be finite, got {v!r}")
    if cfg.t_start is not None and cfg.t_stop is not None and cfg.t_stop <= cfg.t_start:
        raise InputError("time range", f"[{cfg.t_start}, {cfg.t_stop}) is empty")
    fr = list(cfg.split_fractions)
    if len(fr) != 3 or any(not math.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
        raise InputError("split_fractions", f"need three non-negative fractions (train, val, test) summing to 1, "
                                            f"got {fr}")
    if cfg.states is not None and not cfg.states:
        raise InputError("states", "empty list; leave it unset for all states")


# ------------------------------------------------------------------------------------------------ splits
def assign_splits(state: np.ndarray, selected: np.ndarray, bin_size: float, block_s: float,
                  fractions=(0.7, 0.1, 0.2), seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """Deal contiguous blocks of each state to train/val/test (see the module docstring).

    state: (n_bins,) str per bin; selected: (n_bins,) bool, bins that may enter a split. Returns split codes
    (n_bins,) int8 (index into ``SPLITS``; 0 = excluded) and the blocks as dicts (split, state, bin_start,
    bin_stop).
    """
    codes = np.zeros(len(state), dtype=np.int8)
    blocks: list[dict] = []
    block_bins = max(1, int(round(block_s / bin_size)))
    for s in dict.fromkeys(state[selected].tolist()):
        runs = Intervals.runs(selected & (state == s), state)
        cuts = [(a0, min(a0 + block_bins, b)) for a, b in runs for a0 in range(a, b, block_bins)]
        n = len(cuts)
        n_val, n_test = int(round(fractions[1] * n)), int(round(fractions[2] * n))
        if n >= 3:  # every split gets a block when there are enough, at train's expense
            n_val, n_test = max(n_val, 1 if fractions[1] > 0 else 0), max(n_test, 1 if fractions[2] > 0 else 0)
        n_val, n_test = min(n_val, n), min(n_test, n - min(n_val, n))
        n_train = n - n_val - n_test
        rng = np.random.default_rng([seed, zlib.crc32(str(s).encode())])
        order = rng.permutation(n)
        names = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
        for k, name in zip(order, names):
            a, b = cuts[k]
            codes[a:b] = SPLITS.index(name)
            blocks.append({"split": name, "state": str(s), "bin_start": a, "bin_stop": b})
    blocks.sort(key=lambda d: d["bin_start"])
    return codes, blocks


# ------------------------------------------------------------------------------------------------ provenance
def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """sha256 of a file read in 1 MB blocks (a 3 GB NWB file never sits in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def code_version() -> dict:
    """Package version and, when run from a git checkout, the commit and whether the tree is dirty."""
    out = {"neurojepa": __version__, "git_commit": None, "git_dirty": None}
    here = Path(__file__).resolve().parent
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                           timeout=10, check=True).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        out["git_dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass  # not a checkout (an installed wheel): the version alone identifies the code
    return out


# ------------------------------------------------------------------------------------------------ main steps
def _time_range(session, cfg: PrepareConfig) -> tuple[float, float]:
    t0 = session.t_start if cfg.t_start is None else float(cfg.t_start)
    t1 = session.t_stop if cfg.t_stop is None else float(cfg.t_stop)
    if not (t1 > t0):
        raise InputError("time range", f"[{t0}, {t1}) is empty")
    return t0, t1


def _select_grid(session, cfg: PrepareConfig):
    """Edges, labels and the selected-state mask of the final (cropped) grid."""
    from .binning import bin_edges
    from .labels import bin_labels

    t0, t1 = _time_range(session, cfg)
    edges = bin_edges(t0, t1, cfg.bin_size)
    labels = bin_labels(session, edges)
    state = labels["state"].astype(str).to_numpy()
    present = [s for s in dict.fromkeys(state.tolist()) if s]
    wanted = list(cfg.states) if cfg.states is not None else present
    missing = [s for s in wanted if s not in present]
    if missing:
        raise InputError("states", f"no bins in state(s) {missing} in [{t0:g}, {t1:g}) s; states with bins: {present}")
    if not wanted:
        raise InputError("states", f"no bin of [{t0:g}, {t1:g}) s lies in any state epoch")
    sel = np.isin(state, wanted)
    idx = np.flatnonzero(sel)
    first, last = int(idx[0]), int(idx[-1]) + 1
    if first > 0 or last < len(state):  # crop, and recompute on the cropped grid so edges are t_start + k*dt
        edges = bin_edges(float(edges[first]), float(edges[last]), cfg.bin_size)
        labels = bin_labels(session, edges)
        state = labels["state"].astype(str).to_numpy()
        sel = np.isin(state, wanted)
    return edges, labels.reset_index(drop=True), state, sel, wanted


def _write_counts(h5: h5py.File, session, kept: np.ndarray, edges: np.ndarray, cfg: PrepareConfig):
    """Stream the counts into /counts; return per-bin population counts and per-unit totals."""
    from .binning import iter_binned

    n_bins, n_units = len(edges) - 1, len(kept)
    dtype = np.uint8 if cfg.bin_size <= 0.25 else np.uint16  # 1 kHz (refractory limit) x 0.25 s < 256
    rows = int(np.clip(2**20 // max(n_units, 1), 16, 4096))  # ~1 MB chunks: a training window reads one or two
    kw = dict(chunks=(min(rows, n_bins), n_units), compression="gzip", compression_opts=cfg.compression_level,
              shuffle=True)
    ds = h5.create_dataset("counts", shape=(n_bins, n_units), dtype=dtype, **kw)
    pop = np.zeros(n_bins, dtype=np.int64)
    totals = np.zeros(n_units, dtype=np.int64)
    for b0, c in iter_binned(session, kept, float(edges[0]), float(edges[-1]), cfg.bin_size, cfg.chunk_s):
        if c.size and c.max() > np.iinfo(ds.dtype).max:  # rare (duplicated timestamps): widen, keep what's written
            wide = np.uint32 if c.max() > np.iinfo(np.uint16).max else np.uint16
            log.warning("a bin holds %d spikes; storing counts as %s", int(c.max()), np.dtype(wide).name)
            old = ds[:b0]
            del h5["counts"]
            ds = h5.create_dataset("counts", shape=(n_bins, n_units), dtype=wide, **kw)
            ds[:b0] = old
        ds[b0 : b0 + len(c)] = c
        pop[b0 : b0 + len(c)] = c.sum(axis=1, dtype=np.int64)
        totals += c.sum(axis=0, dtype=np.int64)
    return pop, totals


def _write_latents(h5: h5py.File, gt, edges: np.ndarray, bin_size: float, level: int, chunk_bins: int) -> None:
    n_bins = len(edges) - 1
    ds = h5.create_dataset("gt_latents", shape=(n_bins, gt.n_latents), dtype=np.float32,
                           chunks=(min(4096, n_bins), gt.n_latents), compression="gzip", compression_opts=level)
    for a in range(0, n_bins, chunk_bins):
        b = min(a + chunk_bins, n_bins)
        ds[a:b] = gt.latents_at(edges[a:b] + bin_size / 2).astype(np.float32)
    ds.attrs["latent_dt"] = gt.latent_dt


def _summary(qc: dict) -> str:
    dropped = ", ".join(f"{n} {r}" for r, n in qc["dropped"].items()) or "none"
    states = ", ".join(f"{s} {n * qc['bin_ms'] / 1e3 / 60:.1f} min" for s, n in qc["states"].items())
    split_s = {k: sum(b["t_stop"] - b["t_start"] for b in v) for k, v in qc["splits"].items()}
    warn = [c["name"] for c in qc["checks"] if not c["ok"]]
    lines = [
        f"{qc['session_id']}: kept {qc['units_kept']} of {qc['units_total']} units (dropped: {dropped}).",
        f"{qc['n_bins']} bins of {qc['bin_ms']:g} ms; states: {states}.",
        "splits: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in split_s.items()) + ".",
    ]
    if qc["filters_not_applied"]:
        lines.append("not applied (column absent): " + ", ".join(qc["filters_not_applied"]) + ".")
    if qc["filters_computed"]:
        lines.append("computed from spikes: " + ", ".join(qc["filters_computed"]) + ".")
    lines.append("checks: all passed." if not warn else "checks with warnings: " + ", ".join(warn) + ".")
    return "\n".join(lines)


def prepare_session(session, out_dir: str | Path, cfg: PrepareConfig | None = None, *,
                    input_path: str | Path | None = None, draw_qc: QCFigure | None = None) -> Path:
    """Write the prepared dataset of an open :class:`~neurojepa.data.session.Session` to ``out_dir`` (atomically).

    input_path: the file the session came from (hashed into provenance.json). draw_qc: draws ``qc.png`` when
    ``cfg.figure`` (e.g. :func:`neurojepa.report.qc_figure.plot_qc`; see the module docstring). Returns ``out_dir``.
    """
    cfg = cfg or PrepareConfig()
    validate(cfg)
    out_dir = Path(out_dir)
    duration = session.t_stop - session.t_start
    qcr = select_units(session.units, cfg.qc, session.spike_counts(), duration)
    kept = qcr.kept
    edges, labels, state, sel, wanted = _select_grid(session, cfg)
    n_bins = len(edges) - 1
    split_codes, blocks = assign_splits(state, sel, cfg.bin_size, cfg.split_block_s, cfg.split_fractions, cfg.seed)
    bin_t0 = edges[:-1]
    log.info("prepare: %d units x %d bins", len(kept), n_bins)

    with atomic_path(out_dir, directory=True) as tmp:
        with h5py.File(tmp / "dataset.h5", "w") as h5:
            pop, totals = _write_counts(h5, session, kept, edges, cfg)
            h5.create_dataset("bin_t0", data=bin_t0, compression="gzip", chunks=True)
            h5.create_dataset("split", data=split_codes, compression="gzip", chunks=True).attrs["codes"] = \
                json.dumps(list(SPLITS))
            write_table(h5.create_group("labels"), labels)
            units = session.units.loc[kept].copy()
            units.index = units.index.astype(np.int64)
            units.index.name = "unit_id"
            write_table(h5.create_group("units"), units, index="unit_id")
            all_units = pd.DataFrame({"area": session.units["area"].astype(str), "rate_hz": qcr.rates_hz,
                                      "reason": qcr.reasons.astype(str)}, index=session.units.index)
            all_units.index = all_units.index.astype(np.int64)
            all_units.index.name = "unit_id"
            write_table(h5.create_group("qc_units"), all_units, index="unit_id")
            if session.ground_truth is not None:
                _write_latents(h5, session.ground_truth, edges, cfg.bin_size, cfg.compression_level,
                               max(1, int(round(cfg.chunk_s / cfg.bin_size))))
            h5.attrs.update(dict(bin_size=cfg.bin_size, t_start=float(edges[0]), n_bins=n_bins, n_units=len(kept),
                                 session_id=str(session.session_id), format_version=FORMAT_VERSION,
                                 config_hash=config_hash(cfg)))

        span_s = n_bins * cfg.bin_size
        rates_binned = pd.Series(totals / span_s, index=pd.Index(kept, name="unit_id"))
        checks = check_spike_times(session, kept, cfg.checks.unit_batch)
        checks += [
            check_silent_gaps(pop, bin_t0, cfg.bin_size, cfg.checks.silent_gap_s),
            check_block_timing(session.epochs, session.stimuli),
            check_rates(rates_binned, cfg.checks.min_rate_hz, cfg.checks.max_rate_hz),
        ]
        t = lambda k: float(edges[k])  # noqa: E731
        splits = {name: [{"state": b["state"], "t_start": t(b["bin_start"]), "t_stop": t(b["bin_stop"]),
                          "bin_start": b["bin_start"], "bin_stop": b["bin_stop"]}
                         for b in blocks if b["split"] == name] for name in SPLITS[1:]}
        kept_areas = session.units.loc[kept, "area"].astype(str)
        qc = {
            "session_id": str(session.session_id),
            "units_total": qcr.units_total,
            "units_kept": int(len(kept)),
            "dropped": qcr.dropped,
            "filters_applied": qcr.filters_applied,
            "filters_not_applied": qcr.filters_not_applied,
            "filters_computed": qcr.filters_computed,
            "per_area": {str(k): int(v) for k, v in kept_areas.value_counts().sort_index().items()},
            "bin_ms": cfg.bin_size * 1e3,
            "t_start": float(edges[0]),
            "t_stop": float(edges[-1]),
            "n_bins": n_bins,
            "states": {s: int((state == s).sum()) for s in wanted},
            "states_other": {s: int((state == s).sum()) for s in dict.fromkeys(state.tolist()) if s not in wanted},
            "splits": splits,
            "split_bins": {name: int((split_codes == i).sum()) for i, name in enumerate(SPLITS) if name},
            "checks": checks,
        }
        qc["summary"] = _summary(qc)
        (tmp / "qc.json").write_text(json.dumps(qc, indent=1, default=_json_default))
        save_config(cfg, tmp / "config.yaml")
        prov = {
            "input": str(input_path) if input_path else None,
            **_input_identity(input_path),
            "session_id": str(session.session_id),
            "code": code_version(),
            "config_hash": config_hash(cfg),
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
        }
        (tmp / "provenance.json").write_text(json.dumps(prov, indent=1))
        if cfg.figure and draw_qc is not None:
            draw_qc(tmp, tmp / "qc.png")
    return out_dir


def _input_identity(input_path) -> dict:
    """``input_sha256`` of a local input (streamed); for a URL, hashing would download the whole file, so the
    server's identity of it instead: ``input_remote`` = url, size, ETag, Last-Modified (one small request)."""
    from .remote import is_url, remote_fingerprint

    if not input_path:
        return {"input_sha256": None}
    if is_url(str(input_path)):
        return {"input_sha256": None, "input_remote": remote_fingerprint(str(input_path))}
    return {"input_sha256": sha256_file(Path(input_path))}


def _versions() -> dict:
    import sys

    return {"python": sys.version.split()[0], "numpy": np.__version__, "pandas": pd.__version__,
            "h5py": h5py.__version__}


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def prepare(input_path: str | Path, out_dir: str | Path, cfg: PrepareConfig | None = None,
            states_from: str | None = None, *, draw_qc: QCFigure | None = None) -> Path:
    """Prepare one NWB recording (a local file or an https/http/s3 URL, read in place): QC, binning, labels,
    splits, checks; ``qc.png`` through ``draw_qc`` (see :func:`prepare_session`). Returns ``out_dir``.

    Raises InputError (nothing written) for an unreadable file, bad options, no unit left after QC, a requested
    state without bins or an empty time range.
    """
    from .nwb_read import open_session

    cfg = cfg or PrepareConfig()
    validate(cfg)  # before opening a 3 GB file
    session = open_session(input_path, states_from=states_from)
    try:
        return prepare_session(session, out_dir, cfg, input_path=input_path, draw_qc=draw_qc)
    finally:
        close = getattr(session, "close", None)
        if callable(close):
            close()


def print_summary(out_dir: str | Path) -> None:
    """A short human summary of a prepared directory on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    qc = json.loads((Path(out_dir) / "qc.json").read_text())
    console = Console()
    console.print(f"[bold]prepared[/bold] {out_dir}")
    console.print(qc["summary"], highlight=False)
    table = Table("split", *qc["states"], "minutes", box=None)
    for name, blocks in qc["splits"].items():
        per_state = {s: sum(b["bin_stop"] - b["bin_start"] for b in blocks if b["state"] == s) for s in qc["states"]}
        table.add_row(name, *(str(per_state[s]) for s in qc["states"]),
                      f"{sum(per_state.values()) * qc['bin_ms'] / 6e4:.1f}")
    console.print(table)
    for c in qc["checks"]:
        if not c["ok"]:
            console.print(f"[yellow]warning[/yellow] {c['name']}: {c['detail']}", highlight=False)
