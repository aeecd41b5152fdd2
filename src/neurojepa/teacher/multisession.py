"""The multi-session teacher: one shared encoder, predictor and latent space; a read-in and a count read-out per
session. ``teach_many(dataset_dirs, out_dir, cfg)`` trains it on single-session batches streamed from the prepared
HDF5 files and scores every training session with the single-session metrics.

Decisions (docs/scale.md):

- **The same loss as one session.** :class:`MultiSessionTeacher` subclasses :class:`TeacherModule` and only picks
  the batch's session before calling its ``_views`` / ``losses``: views, count anchor, SIGReg and their weights are
  those of the single teacher, so a change there applies to both.
- **Held-out units per session** for co-smoothing, chosen exactly as the single teacher does
  (:func:`~neurojepa.teacher.train.split_units` with the same seed), so per-session metrics compare 1:1.
- **Streaming.** Windows come from :class:`~neurojepa.data.multisession.MultiSessionDataset` (nothing of a
  session stays in memory) through :class:`~neurojepa.data.multisession.SessionBatchSampler` (one session per
  batch; every session gives the same number of batches per epoch). ``train.steps_per_epoch`` is the number of
  optimiser steps per epoch on each rank, spread evenly over the sessions.
- **Replay pairs and per-state read-outs** (``loss.replay_weight``, ``loss.state_readout``: the single teacher's
  state invariance, teacher/replay.py) per session: each session's active train windows get their passive
  partners from its own labels (:func:`session_pairs`, the single teacher's :func:`replay_partners`); its
  batches are then B/2 active windows + their B/2 partners, read from HDF5 like any window. A session whose
  pairing is refused (no passive replay, disagreeing sequences) trains on plain windows (uniform within the
  session), logged. The per-state count read-outs are keyed by (session, state): ``state_readouts["<key>@<code>"]``
  with the code the index into the session's ``/labels/state`` categories (``sessions.json["states"]``).
- **Data parallel.** Lightning's distributed sampler is off (``use_distributed_sampler=False``); the batch
  sampler is given the trainer's rank and world size, so each rank steps through its own share of the batches.
  Ranks may hold different sessions in the same step: the session-specific parameters of the sessions a rank did
  not see enter its loss with weight 0, so DDP's gradient buckets are complete without
  ``find_unused_parameters`` (the average over ranks is the usual DDP mean). SIGReg's characteristic function and
  the count anchor's spike normaliser are reduced over ranks (teacher/sigreg.py, teacher/module.py), so the loss
  and gradients equal one process on the global batch (tests/test_ddp.py).
- **Validation** runs the same fixed batches (one session each, evenly spread val windows) on every rank, so
  ``val_loss`` and the best checkpoint agree across ranks.
- After training only global rank 0 evaluates and writes ``metrics.json`` / latents (with the ``ddp`` launcher
  every rank runs the caller's code after ``fit``).

Outputs in ``out_dir``: ``last.ckpt``, ``best.ckpt``, ``logs/``, ``config.yaml``, ``sessions.json`` (name ->
dataset_dir, n_units, heldin, heldout, states, replay_pairs: what :mod:`~neurojepa.teacher.transfer` needs), ``metrics.json``
(``"teacher_multi"``), ``latents/<name>.npz`` (the single teacher's ``latents.npz`` layout, per session).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import InputError, atomic_path
from ..runtime import set_torch_threads
from .config import TeacherConfig, check_choices
from .model import TeacherNet
from .module import TeacherModule
from ..data.samplers import SessionBatchSampler
from ..data.windows import WindowDataset, collate_windows
from ..training import best_val_loss, check_diverged, make_trainer, run_dir
from .train import split_units, write_latents

log = logging.getLogger(__name__)


def session_key(name: str) -> str:
    """A module-name-safe key for a session name (ModuleDict keys may not contain '.')."""
    return re.sub(r"\W", "_", name)


class MultiSessionTeacher(TeacherModule):
    """:class:`TeacherModule` over several sessions.

    sessions: {session name: number of held-in units} (order = the dataset's session order); heldin: {name:
    held-in unit indices into the session's prepared units}. A batch is ``collate_session_batch``'s dict:
    counts (B, L, n_units of that session), session (int index into ``sessions``); the module keeps the held-in
    columns and runs the single teacher's loss with that session's read-in and count read-out.
    """

    def __init__(self, cfg: TeacherConfig, sessions: dict[str, int], heldin: dict[str, Sequence[int]],
                 states: dict[str, Sequence[str]] | None = None):
        """states: {session name: its state names} (code i = states[name][i]); with ``loss.state_readout`` a
        session of >= 2 states gets one count read-out per state (``state_readouts["<key>@<code>"]``)."""
        super().__init__(cfg, n_units=1, session="_")  # everything of TeacherModule; its 1-unit net is replaced
        m = cfg.model
        self.names = list(sessions)
        self.keys = [session_key(n) for n in self.names]
        if len(set(self.keys)) != len(self.keys):
            raise InputError("sessions", f"session names must be distinct, got {self.names}")
        self.net = TeacherNet.from_config(cfg, dict(zip(self.keys, sessions.values())))
        if self.target_net is not None:
            self.target_net = copy.deepcopy(self.net).requires_grad_(False)
        self.session = self.keys[0]
        for k, name in zip(self.keys, self.names):
            self.register_buffer(f"heldin_{k}", torch.as_tensor(np.asarray(heldin[name]), dtype=torch.int64))
        states = states or {}
        self.n_states = {k: len(states.get(n, ())) for k, n in zip(self.keys, self.names)}
        self.state_readouts = None
        if cfg.loss.state_readout and any(v > 1 for v in self.n_states.values()):
            self.state_readouts = torch.nn.ModuleDict({
                f"{k}@{i}": torch.nn.Linear(m.embed_dim, sessions[n])
                for k, n in zip(self.keys, self.names) if self.n_states[k] > 1 for i in range(self.n_states[k])})

    def init_session_bias(self, key: str, mean_counts: torch.Tensor) -> None:
        """Start session ``key``'s count read-outs (shared and per state) at its units' mean count per bin (U,)."""
        ros = [self.net.count_readout[key]]
        for i in range(self.n_states[key] if self.state_readouts is not None else 0):
            if f"{key}@{i}" in self.state_readouts:
                ros.append(self.state_readouts[f"{key}@{i}"])
        self.net.init_count_readout(ros, mean_counts, key)

    def session_parameters(self, key: str) -> list[torch.nn.Parameter]:
        """Session ``key``'s own parameters: read-in, count read-out (and gains), per-state count read-outs."""
        ps = [*self.net.readin[key].parameters(), *self.net.count_readout[key].parameters()]
        if self.net.count_gain is not None:
            ps.append(self.net.count_gain[key])
        if self.state_readouts is not None:
            ps += [p for name, ro in self.state_readouts.items() if name.startswith(f"{key}@") for p in ro.parameters()]
        return ps

    def state_readouts_of_session(self) -> list[torch.nn.Linear] | None:
        """The batch session's per-state count read-outs (state code order), or None where it has one shared
        read-out (one state, or ``loss.state_readout`` off); :meth:`TeacherModule.readout` uses them."""
        n = self.n_states.get(self.session, 0)
        if self.state_readouts is None or n < 2:
            return None
        return [self.state_readouts[f"{self.session}@{i}"] for i in range(n)]

    def batch_counts(self, batch) -> torch.Tensor:
        """Switch to the batch's session; its held-in columns of the counts."""
        self.session = self.keys[int(batch.session)]
        return batch.counts[:, :, getattr(self, f"heldin_{self.session}")]

    def unused_parameter_zero(self) -> torch.Tensor:
        """Every session's own parameters get an exact-zero gradient on a rank that did not see the session."""
        return 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad)


class MultiSessionData(L.LightningDataModule):
    """Streams train windows (rank-sliced :class:`~neurojepa.data.samplers.SessionBatchSampler`, replay-paired
    batches for the sessions :func:`session_pairs` pairs when ``loss.replay_weight`` > 0) and fixed val batches
    from the prepared files."""

    def __init__(self, dirs: list[Path], cfg: TeacherConfig, length: int):
        super().__init__()
        t = cfg.train
        self.cfg, self.length = cfg, length
        self.train_ds = WindowDataset.from_prepared(dirs, length, t.stride, split="train")
        self.val_ds = WindowDataset.from_prepared(dirs, length, length, split="val")
        empty = [d.name for d, (a, b) in zip(dirs, self.train_ds.session_ranges) if b == a]
        empty += [d.name for d, (a, b) in zip(dirs, self.val_ds.session_ranges) if b == a]
        if empty:
            raise InputError(", ".join(sorted(set(empty))), f"too little train/val data for windows of {length} bins")
        self.val_batches = self._val_batches()
        # {session index: (active starts, partner starts)}; empty when the replay term is off
        self.pairs = {}
        if cfg.loss.replay_weight > 0:
            for s, d in enumerate(dirs):
                p = session_pairs(self.train_ds, s, d)
                if p is not None:
                    self.pairs[s] = p

    def _val_batches(self) -> list[list[int]]:
        """Per session min(its val windows, max(batch, val_windows / K)) evenly spread windows in a fixed order,
        in batches of one session (SIGReg is a batch statistic: a tail batch under half a batch is dropped)."""
        t, k = self.cfg.train, self.val_ds.n_sessions
        rng = np.random.default_rng(t.seed)
        batches = []
        for a, b in self.val_ds.session_ranges:
            n = min(b - a, max(t.batch_size, t.val_windows // k))
            idx = rng.permutation(np.linspace(a, b - 1, n).astype(int))
            chunks = [idx[i:i + t.batch_size].tolist() for i in range(0, n, t.batch_size)]
            if len(chunks) > 1 and len(chunks[-1]) < t.batch_size // 2:
                chunks = chunks[:-1]
            batches += chunks
        return batches

    def train_dataloader(self):
        t, tr = self.cfg.train, self.trainer
        world, rank = (tr.world_size, tr.global_rank) if tr is not None else (1, 0)
        per_session = -(-t.steps_per_epoch * world // self.train_ds.n_sessions)  # ceil: >= steps_per_epoch per rank
        sampler = SessionBatchSampler(self.train_ds, t.batch_size, batches_per_session=per_session, seed=t.seed,
                                      rank=rank, world_size=world, pairs=self.pairs)
        return DataLoader(self.train_ds, batch_sampler=sampler, collate_fn=collate_windows)

    def val_dataloader(self):
        return DataLoader(self.val_ds, batch_sampler=self.val_batches, collate_fn=collate_windows)


def session_pairs(ds, s: int, dataset_dir: Path, source: str = "active",
                  target: str = "passive") -> tuple[np.ndarray, np.ndarray] | None:
    """Replay pairs of session ``s`` of the train :class:`~neurojepa.data.windows.WindowDataset` ``ds``:
    (its ``source`` window starts (n,), their ``target`` partner starts (n,)) in bins, every partner a whole
    window inside a ``target`` train segment; None (logged) when the session has no replay or no pair.

    The labels are read once here (a per-bin table, dropped on return); the counts are never loaded."""
    from ..data.dataset import PreparedSession
    from .replay import replay_partners

    names = ds.state_names[s]
    if not {source, target} <= set(names):
        log.info("teacher: %s: replay pairing off (no %s and %s blocks); training unpaired",
                 dataset_dir.name, source, target)
        return None
    starts, codes = ds.windows(s)
    starts = starts[codes == names.index(source)]
    allowed = ds.intervals(s)[0].keep([target]).tolist()
    partners = None
    if len(starts) and allowed:  # (replay_partners needs at least one allowed segment)
        ps = PreparedSession.load(dataset_dir)
        partners = replay_partners(ps.labels, ps.bin_size, ps.t_start, starts, ds.window, allowed, source, target)
        ps.close()
    if partners is None or (partners >= 0).sum() == 0:
        log.warning("teacher: %s: replay pairing refused (no %s window has a %s partner in the train blocks); "
                    "training unpaired", dataset_dir.name, source, target)
        return None
    keep = partners >= 0
    log.info("teacher: %s: replay pairs: %d of %d %s train windows", dataset_dir.name, keep.sum(), len(starts),
             source)
    return starts[keep], partners[keep]


def _session_names(dirs: list[Path]) -> list[str]:
    names = [d.name for d in dirs]
    keys = [session_key(n) for n in names]
    if len(set(keys)) != len(keys):
        raise InputError("sessions", f"two dataset directories have the same name: {names}")
    return names


def _mean_count(path: Path, heldin: np.ndarray) -> np.ndarray:
    """Mean count per bin of the held-in units over the train split, read in row chunks (bounded memory)."""
    import h5py

    from ..data.dataset import SPLITS

    with h5py.File(path / "dataset.h5", "r") as h5:
        counts, split = h5["counts"], h5["split"][()] == SPLITS.index("train")
        total, n, step = np.zeros(len(heldin)), 0, 1 << 16
        for a in range(0, counts.shape[0], step):
            rows = counts[a:a + step][split[a:a + step]][:, heldin]
            total += rows.sum(0)
            n += rows.shape[0]
    return total / max(n, 1)



def teach_many(dataset_dirs: Sequence[str | os.PathLike], out_dir, cfg: TeacherConfig | None = None,
               resume: bool = False, callbacks: list | None = None, full_eval: bool = True) -> Path | None:
    """Train the multi-session teacher on the prepared datasets ``dataset_dirs`` and score each session.

    Returns ``out_dir`` (layout in the module docstring); None on DDP ranks other than 0 (rank 0 evaluates).
    ``metrics.json["teacher_multi"]``: ``sessions`` {name: the single teacher's ``"teacher"`` metrics on that
    session (gt_r2, cobps, decoding, ...)}, ``mean_gt_r2``, ``train_seconds``, ``epochs``, ``global_step``,
    ``best_val_loss``, ``world_size``, ``replay_pairs`` (summed over sessions), ``dataset_dirs``, ``config``.
    resume: continue from ``out_dir/last.ckpt`` (same steps as an uninterrupted run); full_eval: False scores
    only gt_r2 and the collapse metrics (:func:`evaluate_session`)."""
    from ..config import save_config, to_dict
    from ..data.dataset import PreparedSession

    cfg = cfg or TeacherConfig()
    dirs = [Path(d).resolve() for d in dataset_dirs]
    if not dirs:
        raise InputError("sessions", "no prepared dataset directory given")
    names = _session_names(dirs)
    check_choices(cfg)
    out = Path(out_dir)
    last = run_dir(out, resume)
    set_torch_threads(cfg.train.threads, processes=cfg.train.devices)
    t0 = time.perf_counter()
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)

    sessions = {}
    for name, d in zip(names, dirs):
        ps = PreparedSession.load(d)
        heldin, heldout = split_units(ps.n_units, cfg.eval.heldout_fraction, cfg.train.seed)
        sessions[name] = dict(dataset_dir=str(d), n_units=int(ps.n_units), heldin=heldin.tolist(),
                              heldout=heldout.tolist())
    m = cfg.model  # warm-up = the encoder's receptive field - 1 (TeacherNet.receptive_field)
    warm = m.smooth_bins + (m.kernel - 1) * sum(m.dilations) - 1
    data = MultiSessionData(dirs, cfg, warm + cfg.train.window + m.horizon)  # the states and pairs come from the data
    for s, name in enumerate(names):
        sessions[name]["states"] = data.train_ds.state_names[s]
        sessions[name]["replay_pairs"] = int(len(data.pairs[s][0])) if s in data.pairs else 0
    module = MultiSessionTeacher(cfg, {n: len(s["heldin"]) for n, s in sessions.items()},
                                 {n: s["heldin"] for n, s in sessions.items()},
                                 {n: s["states"] for n, s in sessions.items()})
    assert module.warm == warm, (module.warm, warm)
    for key, name, d in zip(module.keys, names, dirs):  # count read-outs start at the units' mean rate
        module.init_session_bias(key, torch.as_tensor(_mean_count(d, np.asarray(sessions[name]["heldin"])),
                                                      dtype=torch.float32))

    trainer = make_trainer(out, name="teacher", progress=cfg.train.progress, shown=("train_loss", "val_loss",
                           "val_count"), train=cfg.train, max_epochs=cfg.train.max_epochs,
                           patience=cfg.train.patience, tensorboard=True, callbacks=callbacks)
    if trainer.is_global_zero:
        save_config(cfg, out / "config.yaml")
        with atomic_path(out / "sessions.json") as tmp:
            tmp.write_text(json.dumps(sessions, indent=1))
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
    check_diverged(module, "teacher", last)
    if not trainer.is_global_zero:
        return None
    train_s = time.perf_counter() - t0

    best = out / "best.ckpt"
    state = torch.load(best if best.is_file() else last, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    net = module.net.cpu().eval()
    per_session = {}
    (out / "latents").mkdir(exist_ok=True)
    for key, name in zip(module.keys, names):
        s = sessions[name]
        ps = PreparedSession.load(s["dataset_dir"])
        counts = ps.load_counts()
        heldin, heldout = np.asarray(s["heldin"]), np.asarray(s["heldout"])
        z = net.encode_long(np.ascontiguousarray(counts[:, heldin]), key).numpy().astype(np.float32)
        per_session[name] = evaluate_session(net, z, ps, counts, heldin, heldout, cfg, full_eval)
        write_latents(out / "latents" / f"{name}.npz", z, ps, s["dataset_dir"], heldin, heldout)
        del counts
    metrics = dict(sessions=per_session,
                   mean_gt_r2=float(np.mean([m["gt_r2"] for m in per_session.values()]))
                   if all("gt_r2" in m for m in per_session.values()) else None,
                   train_seconds=round(train_s, 2), epochs=int(trainer.current_epoch),
                   global_step=int(trainer.global_step), world_size=int(trainer.world_size),
                   best_val_loss=best_val_loss(trainer),
                   replay_pairs=int(sum(s["replay_pairs"] for s in sessions.values())),
                   dataset_dirs=[str(d) for d in dirs], config=to_dict(cfg))
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps({"teacher_multi": metrics}, indent=2, default=float))
    log.info("teacher_multi: done in %.1f s (train %.1f s)", time.perf_counter() - t0, train_s)
    return out


def evaluate_session(net, z: np.ndarray, session, counts: np.ndarray, heldin: np.ndarray, heldout: np.ndarray,
                     cfg: TeacherConfig, full: bool = True) -> dict:
    """The single teacher's metrics of one session (:func:`~neurojepa.teacher.evaluate.evaluate_teacher`);
    ``full=False``: only the collapse metrics and gt_r2 (no cobps GLM, decoding or baselines: ~10 s less per
    session, for tests and quick looks)."""
    from .evaluate import evaluate_teacher, score_latents, session_context

    if full:
        return evaluate_teacher(net, z, session, counts, heldin, heldout, cfg)
    ctx = session_context(session, counts, heldout, cfg.eval.flash_window_ms)
    ctx.update(heldout_counts=None, labels=None)
    return score_latents(z, ctx) | dict(n_heldin_units=int(len(heldin)), n_heldout_units=int(len(heldout)))
