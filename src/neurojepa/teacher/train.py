"""Train the teacher on a prepared dataset and write everything downstream phases read.

``teach(dataset_dir, out_dir, cfg)`` -> out_dir with::

    last.ckpt, best.ckpt   Lightning checkpoints (every epoch; best by val loss)
    logs/                  CSV and TensorBoard logs
    config.yaml            the resolved TeacherConfig
    metrics.json           {"teacher": {...}} (see evaluate.py), metrics of the best checkpoint
    latents.npz            latents (n_bins, D) float32 causal latents of EVERY bin, bin_size, t_start,
                           dataset_dir, heldin_units / heldout_units (unit indices), embed_dim

One core: :func:`fit_teacher` trains on any session with the PreparedSession attributes and returns the module at
its best checkpoint; :func:`teach_session` (the pipeline, via ``teach``) adds evaluation and the files above, and
``nj.Teacher.fit`` (neurojepa/estimators.py) calls it on counts handed in as arrays.

Determinism: ``seed_everything`` + ``deterministic=True``; windows are drawn by a sampler seeded by
(seed, epoch) and all in-step randomness by (seed, global step), so resuming from ``last.ckpt`` (saved at the end
of each epoch) replays the same steps and gives the same final metrics as an uninterrupted run.

Training windows are cut from the counts held in memory (a session is 10^5 bins x a few hundred units of
uint8, tens of MB), not read through WindowDataset item by item from HDF5, which would dominate the step time.
(``data.dataset.WindowDataset`` preloads too, but it needs a PreparedSession on disk and returns dicts per item;
the teacher also trains on in-memory sessions (tests, toy) and on replay pairs, so it keeps this small dataset.)

Replay pairs (``loss.replay_weight > 0``, teacher/replay.py): batches are then half active train windows, half
their passive partners at the replayed times (state balance kept; the gray block does not take part). Pairing is
off, with a log line, when training is restricted to fewer than both states or the session has no replay.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import save_config, to_dict
from ..errors import InputError, atomic_path
from ..metrics.rows import ColumnView
from ..progress import progress_callbacks
from ..runtime import set_torch_threads
from .config import TeacherConfig, TrainConfig, check_choices
from .evaluate import evaluate_teacher
from .module import TeacherModule

log = logging.getLogger(__name__)


class Windows(Dataset):
    """Windows of ``length`` bins from in-memory counts (n_bins, U); never straddling a segment boundary.

    item: (length, U) float32 counts, or ``(counts, state code)`` when ``codes`` ({state: int}) is given."""

    def __init__(self, counts: np.ndarray, segments, length: int, stride: int, states: list[str] | None = None,
                 codes: dict[str, int] | None = None):
        self.counts, self.length, self.codes = counts, length, codes
        starts, st = [], []
        for i, (a, b) in enumerate(segments):
            s = list(range(a, b - length + 1, stride))
            starts += s
            st += [states[i] if states else ""] * len(s)
        self.starts, self.states = np.asarray(starts, dtype=np.int64), np.asarray(st)

    def __len__(self) -> int:
        return len(self.starts)

    def window(self, s: int) -> torch.Tensor:
        return torch.from_numpy(self.counts[s:s + self.length].astype(np.float32))

    def __getitem__(self, i: int):
        x = self.window(int(self.starts[i]))
        return x if self.codes is None else (x, self.codes[str(self.states[i])])


class PairedWindows(Windows):
    """Replay pairs: item = (2, length, U) counts of a window and its partner (rows ``starts``, ``partners``), or
    ``(counts, (2,) state codes)`` with ``codes``. ``states`` here are the pair's (source, target) states."""

    def __init__(self, counts: np.ndarray, starts: np.ndarray, partners: np.ndarray, length: int,
                 states: tuple[str, str], codes: dict[str, int] | None = None):
        self.counts, self.length, self.codes, self.pair_states = counts, length, codes, states
        self.starts, self.partners = np.asarray(starts, np.int64), np.asarray(partners, np.int64)
        self.states = np.full(len(self.starts), "pair")  # one stratum: the pair itself is state-balanced

    def __getitem__(self, i: int):
        x = torch.stack([self.window(int(self.starts[i])), self.window(int(self.partners[i]))])
        if self.codes is None:
            return x
        return x, torch.tensor([self.codes[s] for s in self.pair_states])


class EpochSampler(Sampler):
    """``num_samples`` window indices per epoch, drawn with replacement, each state equally often (state-balanced
    batches), from a generator seeded by (seed, epoch): the order is a pure function of the epoch number."""

    def __init__(self, states: np.ndarray, num_samples: int, seed: int):
        _, inv, counts = np.unique(states, return_inverse=True, return_counts=True)
        self.weights = torch.as_tensor(1.0 / counts[inv], dtype=torch.float64)
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of every epoch
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_samples


class _GoodCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that refuses to save once the NaN guard fired: the last good checkpoint stays."""

    def _save_checkpoint(self, trainer, filepath):
        if getattr(trainer.lightning_module, "diverged_at", None) is None:
            super()._save_checkpoint(trainer, filepath)


def _segments_with_states(session, split: str) -> tuple[list[tuple[int, int]], list[str]]:
    labels = getattr(session, "labels", None)
    if labels is None:
        segs = session.segments(split)
        return segs, [""] * len(segs)
    state = labels["state"].to_numpy().astype(str)
    segs = session.segments(split)
    return segs, [state[a] for a, _ in segs]


def trainer_kwargs(t: TrainConfig) -> dict:
    """The Lightning Trainer's hardware options from ``train.*``: accelerator, devices, strategy, num_nodes,
    precision. The CPU defaults (auto on a machine without CUDA, 1 device, 32-true) are the old single-process run.

    Lightning detects SLURM (``SLURM_NTASKS`` etc.) and torchelastic on its own; nothing here depends on it."""
    if t.accelerator not in ("auto", "cpu", "gpu", "cuda", "mps"):
        raise InputError("train.accelerator", f"'{t.accelerator}' is not one of auto, cpu, gpu, cuda, mps")
    if t.devices < 1 or t.num_nodes < 1:
        raise InputError("train.devices", f"devices ({t.devices}) and num_nodes ({t.num_nodes}) must be >= 1")
    if t.precision not in ("32-true", "32", "bf16-mixed", "16-mixed", "64-true"):
        raise InputError("train.precision", f"'{t.precision}' is not one of 32-true, bf16-mixed, 16-mixed, 64-true")
    # deterministic=True on CUDA needs a fixed cuBLAS workspace (otherwise torch raises on the first matmul)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return dict(accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
                precision=t.precision)


def run_dir(out: Path, resume: bool) -> Path:
    """Create ``out``; on a fresh run remove the checkpoints and logs of an earlier one (they would mix with this
    run's). Only the process of global rank 0 (from the launcher's environment: RANK, LOCAL_RANK, SLURM_PROCID)
    cleans, so ranks started by srun or Lightning's launcher do not delete what rank 0 is writing. Returns
    ``out/last.ckpt``; InputError when resuming without it."""
    from lightning.pytorch.utilities import rank_zero_only

    last = out / "last.ckpt"
    if resume and not last.is_file():
        raise InputError(last, "nothing to resume from (no last.ckpt)")
    out.mkdir(parents=True, exist_ok=True)
    if not resume and getattr(rank_zero_only, "rank", 0) == 0:
        shutil.rmtree(out / "logs", ignore_errors=True)
        for name in ("last.ckpt", "best.ckpt"):
            (out / name).unlink(missing_ok=True)
    return last


def split_units(n_units: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-in, held-out) unit indices, sorted; held-out ones never reach the encoder (for co-smoothing)."""
    perm = np.random.default_rng(seed).permutation(n_units)
    n_out = int(round(heldout_fraction * n_units))
    return np.sort(perm[n_out:]), np.sort(perm[:n_out])


def units_besides(n_units: int, heldout) -> tuple[np.ndarray, np.ndarray]:
    """(held-in, held-out) unit indices, sorted, for the held-out indices chosen by the user (any order)."""
    out = np.unique(np.asarray(heldout, dtype=np.int64).reshape(-1))
    if len(out) and (out[0] < 0 or out[-1] >= n_units):
        raise InputError("heldout_units", f"unit indices must lie in [0, {n_units}), got {out[0]}..{out[-1]}")
    heldin = np.setdiff1d(np.arange(n_units), out)
    if len(heldin) == 0:
        raise InputError("heldout_units", "every unit is held out; the encoder needs at least one")
    return heldin, out


def encode_states(module: TeacherModule, x: np.ndarray, labels, states: list[str] | None = None) -> np.ndarray:
    """Causal latents (n_bins, D) float32 of the held-in counts x: (n_bins, U); with ``model.state_readin`` every
    bin takes the encoding through its own state's read-in (each pass is causal, so the mix is too). states: the
    state names in the order of the codes the module trained with (default: the sorted states of ``labels``)."""
    net = module.net.eval()
    if len(module.state_keys) == 1:
        return net.encode_long(x).numpy().astype(np.float32)
    state = labels["state"].to_numpy().astype(str)
    names = list(states) if states is not None else sorted(set(state))
    unknown = sorted(set(state) - set(names))
    if unknown:
        raise InputError("states", f"state(s) {unknown} have no read-in; the teacher knows {names}")
    z = np.zeros((len(x), net.embed_dim), np.float32)
    for code, name in enumerate(names):
        rows = state == name
        if rows.any():
            z[rows] = net.encode_long(x, module.state_keys[code]).numpy()[rows]
    return z


def replay_dataset(session, x: np.ndarray, train_ds: Windows, segs: list, states: list[str],
                   train_states: list[str], codes: dict[str, int] | None,
                   source: str = "active", target: str = "passive") -> PairedWindows | None:
    """The replay-paired training set (source train windows + their target partners inside target train
    segments), or None (logged) when pairing does not apply."""
    from .replay import replay_partners

    if train_states and not {source, target} <= set(train_states):
        log.info("teacher: replay pairing off: training on %s only (a pair would use another state's data)",
                 train_states)
        return None
    labels = getattr(session, "labels", None)
    if labels is None or not {source, target} <= set(labels["state"].astype(str)):
        return None  # a real recording without a replay block: silently off (docs/teacher.md)
    if "time_since_flash" not in labels or "image" not in labels:
        log.info("teacher: replay pairing off: no flash labels to pair %s and %s windows by", source, target)
        return None  # counts handed in as arrays carry states only (nj.Teacher)
    starts = train_ds.starts[train_ds.states == source]
    allowed = [g for g, s in zip(segs, states) if s == target]
    partners = replay_partners(labels, float(session.bin_size), float(getattr(session, "t_start", 0.0)), starts,
                               train_ds.length, allowed, source, target)
    if partners is None or (partners >= 0).sum() == 0:
        log.warning("teacher: replay pairing off: no %s window has a %s partner in the train blocks", source, target)
        return None
    keep = partners >= 0
    log.info("teacher: replay pairs: %d of %d %s train windows", keep.sum(), len(starts), source)
    return PairedWindows(x, starts[keep], partners[keep], train_ds.length, (source, target), codes)


def teach(dataset_dir, out_dir, cfg: TeacherConfig | None = None, resume: bool = False,
          train_states: list[str] | None = None, test_states: list[str] | None = None) -> Path:
    """Train and evaluate the teacher on the prepared dataset at ``dataset_dir``; returns ``out_dir``.

    train_states: train (and validate) on blocks of these states only; test_states: the states the cross-state
    metrics are scored on (None or empty: all states; see :func:`teach_session`)."""
    from ..data.dataset import PreparedSession

    ps = PreparedSession.load(dataset_dir)
    return teach_session(ps, out_dir, cfg, resume=resume, dataset_dir=str(Path(dataset_dir).resolve()),
                         train_states=train_states, test_states=test_states)


def _keep_states(segs: list, states: list[str], keep: list[str]) -> tuple[list, list[str]]:
    """The segments (and their states) whose state is in ``keep`` (all when keep is empty)."""
    if not keep:
        return segs, states
    pairs = [(g, s) for g, s in zip(segs, states) if s in keep]
    return [g for g, _ in pairs], [s for _, s in pairs]


def teach_session(session, out_dir, cfg: TeacherConfig | None = None, resume: bool = False, dataset_dir: str = "",
                  callbacks: list[Callback] | None = None, train_states: list[str] | None = None,
                  test_states: list[str] | None = None) -> Path:
    """Train + evaluate on a session object with the PreparedSession attributes (used by tests with a toy one).

    train_states: training and validation windows come only from blocks of these states, and the "within"
    metrics are scored on their test blocks; test_states: the cross-state metrics (gt_r2_cross_state, "cross"
    decoding) are scored on the test blocks of these states. None or [] means all states."""
    cfg = cfg or TeacherConfig()
    train_states, test_states = list(train_states or []), list(test_states or [])
    out = Path(out_dir)
    fit = fit_teacher(session, out, cfg, resume=resume, dataset_dir=dataset_dir, callbacks=callbacks,
                      train_states=train_states, test_states=test_states)
    if fit is None:  # under DDP every rank returns from fit; rank 0 alone evaluates and writes
        return out
    z = encode_states(fit.module, fit.x, getattr(session, "labels", None))
    metrics = evaluate_teacher(fit.module.net, z, session, fit.counts, fit.heldin, fit.heldout, cfg, train_states,
                               test_states)
    metrics.update(train_seconds=round(fit.train_seconds, 2), epochs=fit.epochs, global_step=fit.global_step,
                   best_val_loss=fit.best_val_loss, regulariser=cfg.loss.regulariser,
                   train_states=train_states, test_states=test_states, replay_pairs=fit.replay_pairs,
                   config=to_dict(cfg))
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps({"teacher": metrics}, indent=2, default=float))
    with atomic_path(out / "latents.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, latents=z, bin_size=float(session.bin_size), t_start=float(session.t_start),
                     dataset_dir=str(dataset_dir), heldin_units=fit.heldin, heldout_units=fit.heldout,
                     embed_dim=int(z.shape[1]))
    log.info("teacher: done in %.1f s (train %.1f s)", time.perf_counter() - fit.started, fit.train_seconds)
    return out


@dataclass
class FittedTeacher:
    """What :func:`fit_teacher` hands back: the module at its best checkpoint (eval mode) and the facts of the run."""

    module: TeacherModule
    counts: np.ndarray        # (n_bins, n_units) the session's counts
    x: ColumnView             # (n_bins, len(heldin)) the held-in counts the encoder reads (a view of counts)
    heldin: np.ndarray        # unit indices (columns of counts) the encoder reads, sorted
    heldout: np.ndarray       # unit indices hidden from it (for co-smoothing), sorted
    states: list[str]         # state names in state-code order (sorted; empty without labels)
    started: float            # time.perf_counter() at the start of training
    train_seconds: float
    epochs: int
    global_step: int
    best_val_loss: float | None
    replay_pairs: int


def fit_teacher(session, out_dir, cfg: TeacherConfig, *, heldout: np.ndarray | None = None, resume: bool = False,
                dataset_dir: str = "", callbacks: list[Callback] | None = None,
                train_states: list[str] | None = None, test_states: list[str] | None = None) -> FittedTeacher | None:
    """Train the teacher on a session with the PreparedSession attributes (a prepared directory, a toy session, an
    :class:`~neurojepa.data.arrays.ArraySession`): the one training core of ``teach`` and ``nj.Teacher.fit``.

    Windows come from the session's train (and val) segments; out_dir receives config.yaml, best.ckpt, last.ckpt
    and logs/. heldout: unit indices hidden from the encoder; None takes ``eval.heldout_fraction`` of the units
    at random (seeded, :func:`split_units`). Returns None on DDP ranks other than 0."""
    train_states, test_states = list(train_states or []), list(test_states or [])
    labels = getattr(session, "labels", None)
    known = set(labels["state"].astype(str)) if labels is not None else set()
    for name, given in (("train_states", train_states), ("test_states", test_states)):
        if set(given) - known:
            raise InputError(name, f"unknown state(s) {sorted(set(given) - known)}; the session has {sorted(known)}")
    check_choices(cfg)
    out = Path(out_dir)
    last = run_dir(out, resume)  # a fresh run clears stale checkpoints and logs (rank 0 only)
    set_torch_threads(cfg.train.threads, processes=cfg.train.devices)
    t0 = time.perf_counter()
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    counts = session.load_counts()
    if heldout is None:
        heldin, heldout = split_units(counts.shape[1], cfg.eval.heldout_fraction, cfg.train.seed)
    else:
        heldin, heldout = units_besides(counts.shape[1], heldout)
    x = ColumnView(counts, heldin)  # the held-in columns, read per window / chunk (no copy of the session)
    # state codes travel with each window only where a per-state read-out needs them
    per_state = cfg.loss.state_readout or cfg.model.state_readin
    codes = {s: i for i, s in enumerate(sorted(known))} if per_state and known else None
    module = TeacherModule(cfg, n_units=len(heldin), n_states=max(1, len(known)))
    module.init_readout_bias(torch.as_tensor(x.mean(0), dtype=torch.float32))
    length = module.warm + cfg.train.window + cfg.model.horizon
    segs, states = _keep_states(*_segments_with_states(session, "train"), train_states)
    train_ds = Windows(x, segs, length, cfg.train.stride, states, codes)
    vsegs, vstates = _keep_states(*_segments_with_states(session, "val"), train_states)
    val_ds = Windows(x, vsegs, length, length, vstates, codes)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise InputError(dataset_dir or "session", f"too little train/val data for windows of {length} bins")
    if len(val_ds) > cfg.train.val_windows:  # a fixed, evenly spread subset: cheap and identical every epoch
        keep = np.linspace(0, len(val_ds) - 1, cfg.train.val_windows).astype(int)
        val_ds.starts = val_ds.starts[keep]
    # a fixed shuffle: each val batch mixes states and times like a train batch (SIGReg is a batch statistic)
    val_ds.starts = val_ds.starts[np.random.default_rng(cfg.train.seed).permutation(len(val_ds.starts))]
    paired = replay_dataset(session, x, train_ds, segs, states, train_states, codes) \
        if cfg.loss.replay_weight > 0 else None
    per_item = 2 if paired is not None else 1  # a paired item is two windows: the batch keeps batch_size windows
    if paired is not None:
        train_ds = paired
    sampler = EpochSampler(train_ds.states, cfg.train.steps_per_epoch * cfg.train.batch_size // per_item,
                           cfg.train.seed)
    train_dl = DataLoader(train_ds, batch_size=cfg.train.batch_size // per_item, sampler=sampler, drop_last=True)
    val_dl = DataLoader(val_ds, batch_size=cfg.train.batch_size)

    # two writers: best.ckpt (lowest val loss) and last.ckpt (every epoch); ModelCheckpoint's own save_last only
    # writes when a new best is saved, which would leave last.ckpt behind after the best epoch
    ckpt = _GoodCheckpoint(dirpath=out, filename="best", monitor="val_loss", mode="min", enable_version_counter=False)
    periodic = _GoodCheckpoint(dirpath=out, filename="last", every_n_epochs=1, enable_version_counter=False)
    cbs: list[Callback] = [ckpt, periodic, EarlyStopping("val_loss", patience=cfg.train.patience, mode="min")]
    shown, bar = progress_callbacks("teacher", cfg.train.progress, ("train_loss", "val_loss", "val_count"))
    cbs += shown
    trainer = L.Trainer(default_root_dir=out, max_epochs=cfg.train.max_epochs, **trainer_kwargs(cfg.train),
                        deterministic=True, callbacks=cbs + list(callbacks or []), gradient_clip_val=1.0,
                        logger=[CSVLogger(out, name="logs", version="csv"), TensorBoardLogger(out, name="logs", version="tb")],
                        log_every_n_steps=10, num_sanity_val_steps=0, enable_progress_bar=bar,
                        enable_model_summary=False)
    save_config(cfg, out / "config.yaml")
    trainer.fit(module, train_dl, val_dl, ckpt_path=str(last) if resume else None)
    if module.diverged_at is not None:
        raise InputError("teacher", f"training diverged (non-finite loss or gradient at step {module.diverged_at}); "
                                    f"the last good checkpoint is {last}; try a lower train.lr")
    train_s = time.perf_counter() - t0
    if trainer.global_rank != 0:
        return None

    best = out / "best.ckpt"
    state = torch.load(best if best.is_file() else last, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    module.net.eval()
    return FittedTeacher(module, counts, x, heldin, heldout, sorted(known), t0, train_s, int(trainer.current_epoch),
                         int(trainer.global_step), float(ckpt.best_model_score)
                         if ckpt.best_model_score is not None else None, len(paired) if paired is not None else 0)
