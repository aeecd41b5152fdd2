"""Distil a trained teacher into the spiking student and write everything downstream reads.

``distill(dataset_dir, teacher_dir, out_dir, cfg)`` -> out_dir with::

    student.pt       {"state_dict", "n_in", "n_out", "bin_size", "dale"} (plain tensors: torch.load(weights_only=True))
    config.yaml      the resolved StudentConfig
    metrics.json     {"student": {...}} (evaluate.py)
    readout.npz      readout (n_bins, D) float32: the student's latents for every bin, bin_size
    report_data.npz  what the report draws (report_data.py)
    spikes.npz       spikes of every neuron on the held-out chunks behind the firing statistics (spikes_file.py)
    last.ckpt, logs/ Lightning checkpoint (every val_every steps, for --resume) and CSV logs
    unconstrained/   the same for the ablation (no Dale, no homeostasis), with ``unconstrained=True``

The teacher is frozen by construction: only its saved latents (TEACHER_DIR/latents.npz) are read, once, and cut into
windows aligned with the counts. Training windows are cut from the counts held in memory. Everything is seeded
(``seed_everything``, a seeded sampler); resuming continues from ``last.ckpt`` at its global step.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ..config import save_config, to_dict
from ..errors import InputError, atomic_path
from ..progress import progress_callbacks
from ..runtime import set_torch_threads
from .config import StudentConfig
from .evaluate import apply_readout, evaluate_student, student_features, student_readout, train_mask
from .module import StudentModule
from .network import StudentNet
from .readout_fit import refit_readout
from .report_data import write_report_data
from .spikes_file import SPIKES_FILE, write_student_spikes

log = logging.getLogger(__name__)


class PairedWindows(Dataset):
    """(counts, teacher latents) windows of ``length`` bins inside segments [(start, stop), ...]."""

    def __init__(self, counts: np.ndarray, latents: np.ndarray, segments, length: int, stride: int):
        self.counts, self.latents, self.length = counts, latents, length
        self.starts = np.asarray([s for a, b in segments for s in range(a, b - length + 1, stride)], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int):
        s = int(self.starts[i])
        return (torch.from_numpy(self.counts[s:s + self.length].astype(np.float32)),
                torch.from_numpy(self.latents[s:s + self.length].astype(np.float32)))


def segments_of_split(split: np.ndarray, name: str) -> list[tuple[int, int]]:
    """Maximal [start, stop) runs of ``split == name``."""
    m = np.concatenate([[False], np.asarray(split).astype(str) == name, [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def save_student(net: StudentNet, path: Path) -> Path:
    with atomic_path(path) as tmp:
        torch.save({"state_dict": net.state_dict(), "n_in": net.n_in, "n_out": net.n_out,
                    "bin_size": net.bin_size, "dale": net.cfg.dale}, tmp)
    return path


def load_student(student_dir: str | Path) -> StudentNet:
    """Rebuild a trained student from STUDENT_DIR (student.pt + config.yaml)."""
    from ..config import read_config

    d = Path(student_dir)
    if not (d / "student.pt").is_file() or not (d / "config.yaml").is_file():
        raise InputError(d, "not a student directory (needs student.pt and config.yaml)")
    return student_from_file(d / "student.pt", read_config(StudentConfig, d / "config.yaml"))


def student_from_file(path: Path, cfg: StudentConfig) -> StudentNet:
    """The network saved by :func:`save_student` at ``path``, rebuilt with its config (weights-only load)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = StudentNet(int(blob["n_in"]), int(blob["n_out"]), cfg, float(blob["bin_size"]))
    net.load_state_dict(blob["state_dict"])
    return net.eval()


def fit_student(counts: np.ndarray, latents: np.ndarray, split: np.ndarray, cfg: StudentConfig, out_dir: Path,
                bin_size: float = 0.01, homeostasis: bool = True, resume: bool = False,
                train_segments=None, val_segments=None) -> StudentNet:
    """Train a student on arrays: counts (n_bins, n_in), teacher latents (n_bins, D), split (n_bins,) str.

    Segments default to the runs of 'train'/'val' in split (pass state-aware ones from a PreparedSession).
    Writes last.ckpt and logs/ under out_dir; returns the trained network."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_segments = train_segments if train_segments is not None else segments_of_split(split, "train")
    val_segments = val_segments if val_segments is not None else segments_of_split(split, "val")
    length = cfg.burn_in + cfg.window
    train_ds = PairedWindows(counts, latents, train_segments, length, max(cfg.window // 2, 1))
    if len(train_ds) == 0:
        raise InputError(out_dir, f"no training window of {length} bins fits in the train blocks")
    val_ds = PairedWindows(counts, latents, val_segments, length, length)

    net = StudentNet(counts.shape[1], latents.shape[1], cfg, bin_size)
    gen = np.random.default_rng(cfg.seed)
    calib = np.stack([train_ds[int(i)][0] for i in gen.choice(len(train_ds), min(16, len(train_ds)), replace=False)])
    net.calibrate_bias(torch.from_numpy(calib))
    module = StudentModule(net, cfg, homeostasis=homeostasis)

    sampler = RandomSampler(train_ds, replacement=True, num_samples=cfg.max_steps * cfg.batch_size,
                            generator=torch.Generator().manual_seed(cfg.seed))
    train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=True)
    val_dl = DataLoader(val_ds, batch_size=cfg.batch_size) if len(val_ds) else None
    last = out_dir / "last.ckpt"
    if resume and not last.is_file():
        raise InputError(last, "nothing to resume from (no last.ckpt)")
    ckpt = ModelCheckpoint(dirpath=out_dir, filename="step{step}", save_last=True, save_top_k=0,
                           every_n_train_steps=cfg.val_every)
    name = "student" if homeostasis else "student (unconstrained)"
    shown, bar = progress_callbacks(name, cfg.progress, ("train_loss", "val_loss", "val_cca", "val_rate"), per="step")
    trainer = L.Trainer(default_root_dir=out_dir, max_steps=cfg.max_steps, max_epochs=-1,
                        max_time=datetime.timedelta(minutes=cfg.max_minutes), accelerator="cpu", devices=1,
                        logger=CSVLogger(out_dir, name="logs"), callbacks=[ckpt, *shown], gradient_clip_val=1.0,
                        val_check_interval=cfg.val_every if val_dl is not None else None,
                        check_val_every_n_epoch=None, limit_val_batches=4, num_sanity_val_steps=0,
                        log_every_n_steps=10, enable_model_summary=False,
                        enable_progress_bar=bar, deterministic=True)
    t0 = time.time()
    trainer.fit(module, train_dl, val_dl, ckpt_path=str(last) if resume else None)
    log.info("trained %d steps in %.1f s", trainer.global_step, time.time() - t0)
    net.train_seconds = time.time() - t0
    net.global_step = int(trainer.global_step)
    net.time_capped = net.global_step < cfg.max_steps and time.time() - t0 >= 60 * cfg.max_minutes
    if net.time_capped:  # the cap is a safety net; a capped run depends on the machine's speed and load
        log.warning("student: the wall-clock cap max_minutes=%g stopped training at step %d of max_steps=%d; "
                    "results now depend on machine speed and load (raise max_minutes for a reproducible run)",
                    cfg.max_minutes, net.global_step, cfg.max_steps)
    return net.eval()


LONG_SESSION_BATCH = 16  # chunks per simulation batch when a session's features exceed feature_memory_mb


def finish_readout(net: StudentNet, counts: np.ndarray, latents: np.ndarray, train_bins: np.ndarray,
                   cfg: StudentConfig) -> np.ndarray:
    """Simulate the whole session (causal chunks), refit the readout on the train bins (``readout_refit_steps``;
    readout_fit.py) and return the readout of every bin, (n_bins, D) float32, which evaluation then scores.

    Memory (issue 19): while every bin's features (n_bins x K * n_exc float32) fit in ``feature_memory_mb``, the
    session is simulated once and the refit draws from all train bins. A longer session is simulated twice: once
    keeping the features of evenly spaced train bins only (as many as fit in ``feature_memory_mb``), which the refit
    draws from, then once more with the refitted readout, keeping the readout alone; both passes simulate
    ``LONG_SESSION_BATCH`` chunks at a time instead of 64 (a batch's currents, noise and spikes take ~13 MB per
    chunk for 320 neurons; the chunks' private noise is drawn per batch, so it differs from the one-pass draw)."""
    t0 = time.time()
    train = np.flatnonzero(train_bins)
    width = len(cfg.readout_taus) * net.n_exc
    cap = max(1, int(cfg.feature_memory_mb * 2**20 // (4 * width)))
    if len(counts) <= cap:
        feats = student_features(net, counts, cfg.eval_chunk, cfg.burn_in)
        lat, rows = latents, train
    else:
        rows_kept = train[np.linspace(0, len(train) - 1, min(cap, len(train))).astype(int)] if len(train) else train
        log.info("student: %d bins exceed feature_memory_mb=%d; readout refit on %d evenly spaced train bins, "
                 "then a second simulation for the readout", len(counts), cfg.feature_memory_mb, len(rows_kept))
        feats = student_features(net, counts, cfg.eval_chunk, cfg.burn_in, LONG_SESSION_BATCH, rows=rows_kept)
        lat, rows = latents[rows_kept], np.arange(len(rows_kept))
    if cfg.readout_refit_steps > 0:
        hist = refit_readout(net, feats, lat, rows, cfg)
        if hist:
            log.info("readout refit: %d steps, batch CCA %.3f -> %.3f (%.1f s)", len(hist), hist[0], hist[-1],
                     time.time() - t0)
    if len(counts) <= cap:
        z = apply_readout(net, feats)
    else:
        del feats
        z = student_readout(net, counts, cfg.eval_chunk, cfg.burn_in, LONG_SESSION_BATCH)
    net.refit_seconds = time.time() - t0  # includes the simulation(s) of the session that evaluation reuses
    return z


def check_latents(latents, n_bins: int, where="latents") -> np.ndarray:
    """Teacher latents as (n_bins, D) float32, one row per bin of the counts, all finite; else an InputError."""
    lat = np.asarray(latents, dtype=np.float32)
    if lat.ndim != 2 or len(lat) != n_bins:
        raise InputError(where, f"latents of shape {lat.shape} do not match the {n_bins} bins of the counts")
    if not np.isfinite(lat).all():
        raise InputError(where, "latents contain NaN or inf")
    return lat


def _load_inputs(dataset_dir: str | Path, teacher_dir: str | Path):
    from ..data.dataset import PreparedSession

    ps = PreparedSession.load(dataset_dir)
    tfile = Path(teacher_dir) / "latents.npz"
    if not tfile.is_file():
        raise InputError(teacher_dir, "no latents.npz (train the teacher first)")
    with np.load(tfile) as z:
        latents = check_latents(z["latents"], ps.n_bins, tfile)
        t_bin = float(z["bin_size"]) if "bin_size" in z else ps.bin_size
    if abs(t_bin - ps.bin_size) > 1e-9:
        raise InputError(tfile, f"bin_size {t_bin} differs from the dataset's {ps.bin_size}")
    teacher_decoding = None
    mfile = Path(teacher_dir) / "metrics.json"
    if mfile.is_file():
        teacher_decoding = json.loads(mfile.read_text()).get("teacher", {}).get("decoding")
    return ps, latents, teacher_decoding


def distill(dataset_dir: str | Path, teacher_dir: str | Path, out_dir: str | Path, cfg: StudentConfig | None = None,
            resume: bool = False, unconstrained: bool = False, train_states=None, test_states=None) -> Path:
    """Train, evaluate and save the student (and, with ``unconstrained``, the no-Dale/no-homeostasis ablation,
    whose held-out CCA is reported beside the constrained one). Returns out_dir.

    train_states / test_states (lists of state names, empty = all): train (and validate) on blocks of
    train_states only; score held-out CCA on test blocks of test_states (the cross-state experiment)."""
    cfg = cfg or StudentConfig()
    set_torch_threads(cfg.threads)
    out = Path(out_dir)
    ps, latents, teacher_decoding = _load_inputs(dataset_dir, teacher_dir)
    counts = ps.load_counts()
    split = np.asarray(ps.split).astype(str)
    labels = getattr(ps, "labels", None)
    states = list(train_states) if train_states else None
    segs = dict(train_segments=ps.segments("train", states), val_segments=ps.segments("val", states))
    scoring = dict(train_states=states, test_states=list(test_states) if test_states else None)

    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    state = labels["state"].to_numpy() if labels is not None and "state" in labels else None
    train_bins = train_mask(split, state, states, cfg.burn_in)  # what the readout refits are fit on
    net = fit_student(counts, latents, split, cfg, out, ps.bin_size, resume=resume, **segs)
    t0 = time.time()
    z = finish_readout(net, counts, latents, train_bins, cfg)
    save_student(net, out / "student.pt")
    held: dict = {}  # the held-out spikes behind the firing statistics -> spikes.npz
    metrics, z = evaluate_student(net, counts, latents, split, cfg, labels, teacher_decoding, readout=z,
                                  spikes_out=held, **scoring)
    report_data = metrics.pop("_report", None)
    if report_data is not None:
        write_report_data(out / "report_data.npz", **report_data)
    if held:
        write_student_spikes(out / SPIKES_FILE, held["spikes"], held["chunk_start_bin"], substeps=net.substeps,
                             dt=cfg.dt, bin_size=ps.bin_size, t_start=ps.t_start, n_exc=net.n_exc)
    metrics.update(train_seconds=round(getattr(net, "train_seconds", 0.0), 1), eval_seconds=round(time.time() - t0, 1),
                   refit_seconds=round(getattr(net, "refit_seconds", 0.0), 1),
                   global_step=getattr(net, "global_step", None), time_capped=bool(getattr(net, "time_capped", False)),
                   dataset_dir=str(dataset_dir), teacher_dir=str(teacher_dir), config=to_dict(cfg))
    if unconstrained:
        ucfg = StudentConfig(**{**to_dict(cfg), "dale": False})
        udir = out / "unconstrained"
        save_config(ucfg, udir / "config.yaml")
        unet = fit_student(counts, latents, split, ucfg, udir, ps.bin_size, homeostasis=False,
                           resume=resume and (udir / "last.ckpt").is_file(), **segs)
        uz = finish_readout(unet, counts, latents, train_bins, ucfg)
        save_student(unet, udir / "student.pt")
        um, _ = evaluate_student(unet, counts, latents, split, ucfg, labels, decode=False, readout=uz, **scoring)
        um.pop("_report", None)
        metrics["unconstrained"] = {k: um[k] for k in ("cca_heldout_mean", "cca_null_mean", "rate_hz_median",
                                                      "frac_in_band", "dale_violations") if k in um}
        metrics["cca_heldout_mean_unconstrained"] = um["cca_heldout_mean"]
        metrics["cca_ratio_constrained_to_unconstrained"] = metrics["cca_heldout_mean"] / um["cca_heldout_mean"]
    with atomic_path(out / "readout.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, readout=z, bin_size=ps.bin_size)
    mfile = out / "metrics.json"
    doc = json.loads(mfile.read_text()) if mfile.is_file() else {}  # keep other sections a pipeline put there
    doc["student"] = metrics
    with atomic_path(mfile) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, default=float))
    return out
