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

import json
import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from ..config import save_config, to_dict
from ..data.intervals import Intervals
from ..data.windows import WindowDataset, WindowSource, collate_windows
from ..errors import InputError, atomic_path
from ..runtime import set_torch_threads
from ..training import check_diverged, make_trainer
from .config import StudentConfig
from .evaluate import apply_readout, evaluate_student, student_features, student_readout, train_mask
from .module import StudentModule
from .network import StudentNet
from .readout_fit import refit_readout
from .report_data import write_report_data
from .spikes_file import SPIKES_FILE, write_student_spikes

log = logging.getLogger(__name__)


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
    state = dict(blob["state_dict"])
    if "input_ref" not in state:  # saved before input normalisation existed: it was trained without it (its
        # config.yaml, lacking the option, would read the new default), so it runs without it
        cfg = StudentConfig(**{**to_dict(cfg), "input_norm_tau": 0.0})
        state["input_ref"] = torch.zeros(())
    net = StudentNet(int(blob["n_in"]), int(blob["n_out"]), cfg, float(blob["bin_size"]))
    net.load_state_dict(state)
    return net.eval()


def fit_student(counts: np.ndarray, latents: np.ndarray, cfg: StudentConfig, out_dir: Path, *, bin_size: float,
                train: Intervals, val: Intervals, homeostasis: bool = True, resume: bool = False) -> StudentNet:
    """Train a student on arrays: counts (n_bins, n_in), teacher latents (n_bins, D), on windows inside the
    ``train`` intervals (validated on ``val``'s); bin_size (s) of the counts' bins.

    Writes last.ckpt and logs/ under out_dir; returns the trained network."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    length = cfg.burn_in + cfg.window
    train_ds, val_ds = (WindowDataset([WindowSource.in_memory(counts, iv, latents=latents)], length, stride)
                        for iv, stride in ((train, max(cfg.window // 2, 1)), (val, length)))
    if len(train_ds) == 0:
        raise InputError(out_dir, f"no training window of {length} bins fits in the train blocks")

    net = StudentNet(counts.shape[1], latents.shape[1], cfg, bin_size)
    gen = np.random.default_rng(cfg.seed)
    calib = np.stack([train_ds[int(i)]["counts"] for i in gen.choice(len(train_ds), min(16, len(train_ds)),
                                                                     replace=False)])
    net.calibrate_bias(torch.from_numpy(calib))
    module = StudentModule(net, cfg, homeostasis=homeostasis)

    draws = RandomSampler(train_ds, replacement=True, num_samples=cfg.max_steps * cfg.batch_size,
                          generator=torch.Generator().manual_seed(cfg.seed))
    train_dl = DataLoader(train_ds, batch_sampler=BatchSampler(draws, cfg.batch_size, drop_last=True),
                          collate_fn=collate_windows)
    val_dl = DataLoader(val_ds, batch_sampler=BatchSampler(SequentialSampler(val_ds), cfg.batch_size, False),
                        collate_fn=collate_windows) if len(val_ds) else None
    last = out_dir / "last.ckpt"
    if resume and not last.is_file():
        raise InputError(last, "nothing to resume from (no last.ckpt)")
    name = "student" if homeostasis else "student (unconstrained)"
    trainer = make_trainer(out_dir, name=name, progress=cfg.progress, shown=("train_loss", "val_loss", "val_cca",
                           "val_rate"), max_steps=cfg.max_steps, every_n_steps=cfg.val_every,
                           val_every=cfg.val_every if val_dl is not None else None, max_minutes=cfg.max_minutes,
                           limit_val_batches=4)
    t0 = time.time()
    trainer.fit(module, train_dl, val_dl, ckpt_path=str(last) if resume else None)
    check_diverged(module, "student", last)
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
        feats = student_features(net, counts, cfg.eval_chunk, cfg.eval_warmup)
        lat, rows = latents, train
    else:
        rows_kept = train[np.linspace(0, len(train) - 1, min(cap, len(train))).astype(int)] if len(train) else train
        log.info("student: %d bins exceed feature_memory_mb=%d; readout refit on %d evenly spaced train bins, "
                 "then a second simulation for the readout", len(counts), cfg.feature_memory_mb, len(rows_kept))
        feats = student_features(net, counts, cfg.eval_chunk, cfg.eval_warmup, LONG_SESSION_BATCH, rows=rows_kept)
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
        z = student_readout(net, counts, cfg.eval_chunk, cfg.eval_warmup, LONG_SESSION_BATCH)
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
    return ps, latents, teacher_decoding, teacher_window_ms(teacher_dir, teacher_decoding)


def teacher_window_ms(teacher_dir: str | Path, teacher_decoding: dict | None) -> float:
    """The flash window (ms) the teacher decoded with, which the student's decoding must share: recorded in its
    decoding results, else its config.yaml's ``eval.flash_window_ms`` (teachers written before the window was
    recorded), else TeacherConfig's (the one home of the default)."""
    from ..config import read_config
    from ..teacher.config import TeacherConfig

    recorded = (teacher_decoding or {}).get("flash_window_ms")
    if recorded is not None:
        return float(recorded)
    cfile = Path(teacher_dir) / "config.yaml"
    cfg = read_config(TeacherConfig, cfile) if cfile.is_file() else TeacherConfig()
    return float(cfg.eval.flash_window_ms)


def distill(dataset_dir: str | Path, teacher_dir: str | Path, out_dir: str | Path, cfg: StudentConfig | None = None,
            resume: bool = False, unconstrained: bool = False, train_states=None, test_states=None) -> Path:
    """Train, evaluate and save the student (and, with ``unconstrained``, the no-Dale/no-homeostasis ablation,
    whose held-out CCA is reported beside the constrained one). Returns out_dir.

    train_states / test_states (lists of state names, empty = all): train (and validate) on blocks of
    train_states only; score held-out CCA on test blocks of test_states (the cross-state experiment)."""
    cfg = cfg or StudentConfig()
    set_torch_threads(cfg.threads)
    out = Path(out_dir)
    ps, latents, teacher_decoding, window_ms = _load_inputs(dataset_dir, teacher_dir)
    counts = ps.load_counts()
    split = np.asarray(ps.split).astype(str)
    labels = ps.labels
    states = list(train_states) if train_states else None
    segs = dict(bin_size=ps.bin_size, train=ps.segments("train", states), val=ps.segments("val", states))
    scoring = dict(train_states=states, test_states=list(test_states) if test_states else None)

    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    state = labels["state"].to_numpy() if labels is not None and "state" in labels else None
    train_bins = train_mask(split, state, states, cfg.burn_in)  # what the readout refits are fit on
    net = fit_student(counts, latents, cfg, out, resume=resume, **segs)
    t0 = time.time()
    z = finish_readout(net, counts, latents, train_bins, cfg)
    save_student(net, out / "student.pt")
    held: dict = {}  # the held-out spikes behind the firing statistics -> spikes.npz
    metrics, z = evaluate_student(net, counts, latents, split, cfg, labels, teacher_decoding, readout=z,
                                  spikes_out=held, flash_window_ms=window_ms, **scoring)
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
        unet = fit_student(counts, latents, ucfg, udir, homeostasis=False,
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
