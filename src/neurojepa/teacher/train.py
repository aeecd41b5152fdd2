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

Training windows come from :class:`~neurojepa.data.windows.WindowDataset` over the counts held in memory (a
session is 10^5-10^6 bins x a few hundred units of uint8), drawn by
:class:`~neurojepa.data.samplers.StateBalancedBatches`; the Trainer is :func:`~neurojepa.training.make_trainer`'s.

Replay pairs (``loss.replay_weight > 0``, teacher/replay.py): batches are then half active train windows, half
their passive partners at the replayed times (state balance kept; the gray block does not take part). Pairing is
off, with a log line, when training is restricted to fewer than both states or the session has no replay.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from ..config import save_config, to_dict
from ..data.dataset import BinnedSession
from ..data.samplers import StateBalancedBatches
from ..data.windows import WindowDataset, WindowSource, collate_windows
from ..errors import InputError, atomic_path
from ..metrics.rows import ColumnView
from ..runtime import set_torch_threads
from ..training import best_val_loss, check_diverged, make_trainer, run_dir
from .config import TeacherConfig, check_choices
from .evaluate import evaluate_teacher
from .module import TeacherModule
from .state_centring import centre, centring_on, state_centres

log = logging.getLogger(__name__)


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
    bin takes the encoding through its own state's read-in (each pass is causal, so the mix is too), and with
    ``module.state_centres`` (``loss.state_centring``, teacher/state_centring.py) every bin's state centre is
    subtracted. states: the state names in the order of the codes the module trained with (default: the sorted
    states of ``labels``)."""
    net = module.net.eval()
    centres = module.state_centres
    if len(module.state_keys) == 1 and centres is None:
        return net.encode_long(x).numpy().astype(np.float32)
    if labels is None:
        why = ("has one read-in per state (model.state_readin)" if len(module.state_keys) > 1
               else "centres its latent within each state (loss.state_centring)")
        raise InputError("states", f"this teacher {why}: pass states")
    state = labels["state"].to_numpy().astype(str)
    names = list(states) if states is not None else sorted(set(state))
    unknown = sorted(set(state) - set(names))
    if unknown:
        raise InputError("states", f"state(s) {unknown} have no read-in; the teacher knows {names}")
    if len(module.state_keys) == 1:
        z = net.encode_long(x).numpy().astype(np.float32)
    else:
        z = np.zeros((len(x), net.embed_dim), np.float32)
        for code, name in enumerate(names):
            rows = state == name
            if rows.any():
                z[rows] = net.encode_long(x, module.state_keys[code]).numpy()[rows]
    return z if centres is None else centre(z, state, names, centres)


def replay_pairs(session: BinnedSession, windows: WindowDataset, train_states: list[str], source: str = "active",
                 target: str = "passive") -> tuple[np.ndarray, np.ndarray] | None:
    """(source train window starts (n,), their target partners' starts (n,)) of a one-session train dataset,
    every partner a whole window inside a target train interval; None (logged) when pairing does not apply."""
    from .replay import replay_partners

    if train_states and not {source, target} <= set(train_states):
        log.info("teacher: replay pairing off: training on %s only (a pair would use another state's data)",
                 train_states)
        return None
    labels = session.labels
    if not {source, target} <= set(labels["state"].astype(str)):
        return None  # a real recording without a replay block: silently off (docs/teacher.md)
    if "time_since_flash" not in labels or "image" not in labels:
        log.info("teacher: replay pairing off: no flash labels to pair %s and %s windows by", source, target)
        return None  # counts handed in as arrays carry states only (nj.Teacher)
    starts, codes = windows.windows(0)
    names = windows.state_names[0]
    starts = starts[codes == names.index(source)]
    allowed = windows.sources[0].intervals.keep([target]).tolist()
    partners = replay_partners(labels, float(session.bin_size), float(session.t_start), starts, windows.window,
                               allowed, source, target)
    if partners is None or (partners >= 0).sum() == 0:
        log.warning("teacher: replay pairing off: no %s window has a %s partner in the train blocks", source, target)
        return None
    keep = partners >= 0
    log.info("teacher: replay pairs: %d of %d %s train windows", keep.sum(), len(starts), source)
    return starts[keep], partners[keep]


def per_state_regulariser(cfg: TeacherConfig, paired: bool, n_states: int) -> bool:
    """Whether the regulariser acts within each state (``loss.reg_per_state``). ``auto``: when training sees two or
    more states and no replay pairs tie them, SIGReg pushes every state's latents to the same N(0, I), so the state
    cannot be read from the latent's moments and a read-out fit in one state holds in the other (docs/teacher.md,
    issue 15: cross-state gt_r2 0.78 -> 0.92 and 0.76 -> 0.83 on two seeds of the generic two-state preset). One
    process only (its SIGReg groups would differ between ranks): under data parallelism ``auto`` stays off, logged."""
    mode = cfg.loss.reg_per_state
    if mode != "auto":
        return mode == "always"
    on = n_states > 1 and not paired
    if on and cfg.train.devices * cfg.train.num_nodes > 1:
        log.info("teacher: per-state regulariser off under data parallelism (loss.reg_per_state=auto)")
        return False
    if on:
        log.info("teacher: %d states and no replay pairs: SIGReg within each state (loss.reg_per_state=auto)",
                 n_states)
    return on


def anchor_mode(cfg: TeacherConfig, paired: bool) -> str:
    """The count anchor's mode (``loss.count_mode``). ``auto``: ``forward`` where replay pairs tie the states (the
    VBN case: the replay tie and the per-state read-outs were built around it), ``both`` otherwise (the forward
    anchor plus each view predicting the units it does not see, which is what co-smoothing asks; on the real T182
    recording 1.20x / 1.13x / 1.36x the smoothing baseline's cobps on 3 seeds, forward alone 1.10x / 1.08x / 1.26x;
    cross-state gt_r2 of the generic two-state preset 0.925 against 0.893; docs/teacher.md)."""
    mode = cfg.loss.count_mode
    if mode != "auto":
        return mode
    mode = "forward" if paired else "both"
    log.info("teacher: count anchor %s (loss.count_mode=auto, %s)", mode,
             "replay pairs" if paired else "no replay pairs")
    return mode


def write_latents(path: Path, z: np.ndarray, session, dataset_dir: str, heldin: np.ndarray,
                  heldout: np.ndarray, **extra: np.ndarray) -> None:
    """``latents.npz``: latents (n_bins, D) float32 of every bin, bin_size, t_start, dataset_dir, heldin_units,
    heldout_units, embed_dim (what the student, the report and export read), plus ``extra`` arrays (the state
    centres and names when the latent is centred within each state)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, latents=z, bin_size=float(session.bin_size), t_start=float(session.t_start),
                     dataset_dir=str(dataset_dir), heldin_units=heldin, heldout_units=heldout,
                     embed_dim=int(z.shape[1]), **extra)


def teach(dataset_dir, out_dir, cfg: TeacherConfig | None = None, resume: bool = False,
          train_states: list[str] | None = None, test_states: list[str] | None = None) -> Path:
    """Train and evaluate the teacher on the prepared dataset at ``dataset_dir``; returns ``out_dir``.

    train_states: train (and validate) on blocks of these states only; test_states: the states the cross-state
    metrics are scored on (None or empty: all states; see :func:`teach_session`)."""
    from ..data.dataset import PreparedSession

    ps = PreparedSession.load(dataset_dir)
    return teach_session(ps, out_dir, cfg, resume=resume, dataset_dir=str(Path(dataset_dir).resolve()),
                         train_states=train_states, test_states=test_states)


def teach_session(session: BinnedSession, out_dir, cfg: TeacherConfig | None = None, resume: bool = False, dataset_dir: str = "",
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
    z = fit.latents if fit.latents is not None else encode_states(fit.module, fit.x, session.labels)
    metrics = evaluate_teacher(fit.module.net, z, session, fit.counts, fit.heldin, fit.heldout, cfg, train_states,
                               test_states)
    metrics.update(train_seconds=round(fit.train_seconds, 2), epochs=fit.epochs, global_step=fit.global_step,
                   best_val_loss=fit.best_val_loss, regulariser=cfg.loss.regulariser,
                   train_states=train_states, test_states=test_states, replay_pairs=fit.replay_pairs,
                   reg_per_state=bool(fit.module.reg_per_state), count_mode=fit.module.count_mode,
                   state_centring=fit.module.state_centres is not None, config=to_dict(cfg))
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps({"teacher": metrics}, indent=2, default=float))
    centred = {} if fit.module.state_centres is None else dict(state_centres=fit.module.state_centres,
                                                                state_names=np.array(fit.states))
    write_latents(out / "latents.npz", z, session, dataset_dir, fit.heldin, fit.heldout, **centred)
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
    latents: np.ndarray | None = None  # (n_bins, D) the session's latents, when computing the state centres encoded them


def fit_teacher(session: BinnedSession, out_dir, cfg: TeacherConfig, *, heldout: np.ndarray | None = None, resume: bool = False,
                dataset_dir: str = "", callbacks: list[Callback] | None = None,
                train_states: list[str] | None = None, test_states: list[str] | None = None) -> FittedTeacher | None:
    """Train the teacher on a session with the PreparedSession attributes (a prepared directory, a toy session, an
    :class:`~neurojepa.data.arrays.ArraySession`): the one training core of ``teach`` and ``nj.Teacher.fit``.

    Windows come from the session's train (and val) segments; out_dir receives config.yaml, best.ckpt, last.ckpt
    and logs/. heldout: unit indices hidden from the encoder; None takes ``eval.heldout_fraction`` of the units
    at random (seeded, :func:`split_units`). Returns None on DDP ranks other than 0."""
    train_states, test_states = list(train_states or []), list(test_states or [])
    known = set(session.labels["state"].astype(str))
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
    states = sorted(known)  # state codes: their index here (the per-state read-ins / read-outs)
    module = TeacherModule(cfg, n_units=len(heldin), n_states=max(1, len(known)))
    module.init_readout_bias(torch.as_tensor(x.mean(0), dtype=torch.float32))
    length = module.warm + cfg.train.window + cfg.model.horizon
    train_ds, val_ds = (WindowDataset([WindowSource.in_memory(x, session.segments(split).keep(train_states),
                                                              state_names=states)], length, stride)
                        for split, stride in (("train", cfg.train.stride), ("val", length)))
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise InputError(dataset_dir or "session", f"too little train/val data for windows of {length} bins")
    val = np.arange(len(val_ds))
    if len(val) > cfg.train.val_windows:  # a fixed, evenly spread subset: cheap and identical every epoch
        val = val[np.linspace(0, len(val) - 1, cfg.train.val_windows).astype(int)]
    # a fixed shuffle: each val batch mixes states and times like a train batch (SIGReg is a batch statistic)
    val = val[np.random.default_rng(cfg.train.seed).permutation(len(val))]
    val_batches = [val[k:k + cfg.train.batch_size].tolist() for k in range(0, len(val), cfg.train.batch_size)]
    pairs = replay_pairs(session, train_ds, train_states) if cfg.loss.replay_weight > 0 else None
    per_item = 2 if pairs is not None else 1  # a pair is two windows: the batch keeps batch_size windows
    window_states = train_ds.windows(0)[1]  # each train window's state code: the sampler's strata
    module.reg_per_state = per_state_regulariser(cfg, pairs is not None, len(np.unique(window_states)))
    module.count_mode = anchor_mode(cfg, pairs is not None)
    trainer = make_trainer(out, name="teacher", progress=cfg.train.progress, shown=("train_loss", "val_loss",
                           "val_count"), train=cfg.train, max_epochs=cfg.train.max_epochs,
                           patience=cfg.train.patience, tensorboard=True, callbacks=callbacks)
    sampler = StateBalancedBatches(window_states, cfg.train.steps_per_epoch * cfg.train.batch_size
                                   // per_item, cfg.train.batch_size // per_item, cfg.train.seed,
                                   pairs=(0, *pairs) if pairs is not None else None,
                                   rank=trainer.global_rank, world_size=trainer.world_size)
    train_dl = DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate_windows)
    val_dl = DataLoader(val_ds, batch_sampler=val_batches, collate_fn=collate_windows)
    save_config(cfg, out / "config.yaml")
    trainer.fit(module, train_dl, val_dl, ckpt_path=str(last) if resume else None)
    check_diverged(module, "teacher", last)
    train_s = time.perf_counter() - t0
    if trainer.global_rank != 0:
        return None

    best = out / "best.ckpt"
    state = torch.load(best if best.is_file() else last, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    module.net.eval()
    z = None
    if centring_on(cfg, module.reg_per_state, len(states)):  # teacher/state_centring.py
        z, labels = encode_states(module, x, session.labels, states), session.labels["state"]
        module.state_centres = state_centres(z, labels, session.split, states)
        centre(z, labels, states, module.state_centres)  # what encode_states gives from now on, kept: no re-encoding
        log.info("teacher: latent centred within each of %d states (loss.state_centring=%s)", len(states),
                 cfg.loss.state_centring)
    return FittedTeacher(module, counts, x, heldin, heldout, states, t0, train_s, int(trainer.current_epoch),
                         int(trainer.global_step), best_val_loss(trainer), len(pairs[0]) if pairs is not None else 0,
                         z)
