"""Transfer a trained multi-session teacher to a new session: fit only its read-in (and count read-out).

``transfer(dataset_dir, teacher_dir, out_dir)`` loads the teacher written by
:func:`~neurojepa.teacher.multisession.teach_many`, adds the new session to the net, freezes everything shared
(smoother, TCN, head, linear path, predictor, the other sessions' maps) and fits the new session's read-in and
Poisson count read-out with the single teacher's loss (views, SIGReg, count anchor: :meth:`TeacherModule.losses`)
on its train blocks. It then scores the new session on its test blocks with the single-session metrics.

Decisions (docs/scale.md):

- **The project's one Trainer** (:func:`~neurojepa.training.make_trainer`, no checkpoints: a few hundred steps
  over two small linear maps of one session). Windows are cut from counts in memory
  (:class:`~neurojepa.data.windows.WindowDataset`) and drawn state-balanced by the single teacher's sampler
  (:class:`~neurojepa.data.samplers.StateBalancedBatches`, seeded), so the run is reproducible.
- **Held-out units** as in the single teacher (:func:`~neurojepa.teacher.train.split_units`, teacher seed):
  the read-in sees held-in units only; held-out units score co-smoothing.
- **Null**: the same frozen model with the new read-in as initialised (seeded, unfitted): how much of gt_r2 the
  frozen encoder gives any random projection of the counts. Transfer is worth it when the fitted read-in beats it.
- **State invariance as in training**: with the teacher's ``loss.state_readout`` the new session gets one count
  read-out per state (fitted with its read-in), and with ``loss.replay_weight`` > 0 its batches are its own
  replay pairs (half active train windows, half their passive partners, the single teacher's
  :func:`~neurojepa.teacher.train.replay_pairs`) with the replay term in the loss; a session without a valid
  replay is fitted on state-balanced plain windows (logged, ``replay_pairs`` 0).
- **Steps it took**: gt_r2 is measured every ``eval_every`` steps (ridge on all bins' latents, fit on train
  blocks, scored on test blocks); ``steps_to_final`` is the first measured step within 0.01 of the final gt_r2.

Outputs in ``out_dir``: ``metrics.json`` (``"transfer"``), ``readin.pt`` (the fitted read-in and read-out
tensors, load with ``weights_only=True``), ``latents.npz`` (the single teacher's layout).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from ..errors import InputError, atomic_path
from ..runtime import set_torch_threads
from ..training import NanGuard

log = logging.getLogger(__name__)


def load_multisession_teacher(teacher_dir, extra: dict[str, list[int]] | None = None,
                              extra_states: dict[str, list[str]] | None = None):
    """(module, cfg, sessions) of a ``teach_many`` output directory (best.ckpt, else last.ckpt).

    extra: {new session name: its held-in unit indices}, sessions added with freshly initialised maps (drawn
    from the global torch RNG: seed it first); extra_states: {new session name: its state names} (per-state
    count read-outs under ``loss.state_readout``). sessions: the teacher's ``sessions.json``."""
    from ..config import load_config
    from .config import TeacherConfig
    from .multisession import MultiSessionTeacher

    tdir = Path(teacher_dir)
    if not (tdir / "sessions.json").is_file() or not (tdir / "config.yaml").is_file():
        raise InputError(tdir, "not a multi-session teacher directory (no sessions.json / config.yaml); "
                               "run `neurojepa teach DIR1 DIR2 ... --out DIR`")
    ckpt = next((tdir / n for n in ("best.ckpt", "last.ckpt") if (tdir / n).is_file()), None)
    if ckpt is None:
        raise InputError(tdir, "no best.ckpt or last.ckpt: the teacher has not finished an epoch")
    cfg = load_config(TeacherConfig, tdir / "config.yaml")
    sessions = json.loads((tdir / "sessions.json").read_text())
    heldin = {n: s["heldin"] for n, s in sessions.items()}
    heldin.update(extra or {})
    states = {n: s.get("states", []) for n, s in sessions.items()} | dict(extra_states or {})
    module = MultiSessionTeacher(cfg, {n: len(h) for n, h in heldin.items()}, heldin, states)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    missing, unexpected = module.load_state_dict(state, strict=False)
    new_keys = {module.keys[module.names.index(n)] for n in (extra or {})}
    stray = [k for k in missing
             if not any(k.endswith((f"_{nk}", f".{nk}")) or f".{nk}." in k or f".{nk}@" in k for nk in new_keys)]
    if stray or unexpected:
        raise InputError(ckpt, f"checkpoint does not match the teacher's config (missing {stray[:3]}, "
                               f"unexpected {list(unexpected)[:3]})")
    return module, cfg, sessions


class ReadinFit(NanGuard, L.LightningModule):
    """Fits ``params`` (a new session's maps) of a frozen multi-session teacher with its own loss; records the
    loss every 25 steps and gt_r2 every ``eval_every`` steps (``curve``: a callable scoring the current net)."""

    def __init__(self, teacher, params: list[torch.nn.Parameter], lr: float, weight_decay: float, steps: int,
                 eval_every: int, curve):
        super().__init__()
        self.teacher, self.params, self.lr, self.weight_decay = teacher, params, lr, weight_decay
        self.steps, self.eval_every, self.curve = steps, eval_every, curve
        self.losses, self.replay_losses, self.eval_seconds = {}, {}, 0.0

    def training_step(self, batch, batch_idx):
        step = int(self.global_step) + 1  # the step being taken (the views' seed, as in the teacher's loop)
        self.teacher.net.train()
        out = self.teacher.losses(batch.counts, self.teacher._views(batch.counts, step), step, batch.state,
                                  batch.paired)
        if step % 25 == 0 or step == self.steps:
            self.losses[step] = round(float(out["loss"].detach()), 5)
            self.replay_losses[step] = round(float(out["replay"]), 5)
        return self.guard(out["loss"])

    def on_train_batch_end(self, outputs, batch, batch_idx):
        step = int(self.global_step)
        if self.eval_every and step % self.eval_every == 0 and step != self.steps:
            t = time.perf_counter()
            self.curve(step)
            self.eval_seconds += time.perf_counter() - t

    def configure_optimizers(self):
        return torch.optim.AdamW(self.params, lr=self.lr, weight_decay=self.weight_decay)


def transfer(dataset_dir, teacher_dir, out_dir, steps: int = 300, lr: float = 1e-2, eval_every: int = 50,
             baselines: bool = False, seed: int | None = None, full_eval: bool = True) -> Path:
    """Fit a new session's read-in to the frozen multi-session teacher in ``teacher_dir``; returns ``out_dir``.

    dataset_dir: the new session's prepared directory; steps: optimiser steps (batch ``train.batch_size`` of the
    teacher's config); lr: AdamW learning rate (1e-2: two linear maps; at the teacher's 3e-3 the
    same final gt_r2 took 2-3x the steps, docs/scale.md); eval_every: gt_r2 every so
    many steps (0: only at the end); baselines: also score PCA/raw/FA on the new session; seed: default the
    teacher's; full_eval: False scores gt_r2 and collapse metrics only (also for the null).
    ``metrics.json["transfer"]``: the single teacher's metrics of the new session (gt_r2, cobps, decoding, ...)
    plus ``steps``, ``fit_seconds``, ``gt_r2_curve`` {step: gt_r2}, ``steps_to_final``, ``null`` (gt_r2 and
    decoding with the unfitted read-in), ``session``, ``teacher_dir``, ``dataset_dir``."""
    from torch.utils.data import DataLoader

    from ..config import load_config
    from ..data.dataset import PreparedSession
    from ..metrics.latent import ridge_r2
    from .config import TeacherConfig
    from .evaluate import score_latents, session_context
    from .multisession import evaluate_session, session_key
    from .train import write_latents
    from ..data.samplers import StateBalancedBatches
    from ..data.windows import WindowDataset, WindowSource, collate_windows
    from ..training import check_diverged, make_trainer
    from .train import replay_pairs, split_units

    if steps < 1:
        raise InputError("steps", f"must be >= 1, got {steps}")
    t0 = time.perf_counter()
    ps = PreparedSession.load(dataset_dir)
    tdir = Path(teacher_dir)
    if not (tdir / "config.yaml").is_file():
        raise InputError(tdir, "not a multi-session teacher directory (no config.yaml)")
    cfg0 = load_config(TeacherConfig, tdir / "config.yaml")
    seed = cfg0.train.seed if seed is None else int(seed)
    heldin, heldout = split_units(ps.n_units, cfg0.eval.heldout_fraction, seed)
    known = json.loads((tdir / "sessions.json").read_text()) if (tdir / "sessions.json").is_file() else {}
    name = "new_" + Path(dataset_dir).resolve().name
    while session_key(name) in {session_key(n) for n in known}:
        name += "_"
    known_states = sorted(set(ps.labels["state"].astype(str))) if ps.labels is not None else []
    torch.manual_seed(seed)
    module, cfg, _ = load_multisession_teacher(tdir, {name: heldin.tolist()}, {name: known_states})
    cfg.eval.baselines = bool(baselines)
    set_torch_threads(cfg.train.threads)
    key = module.keys[module.names.index(name)]
    module.session = key
    net = module.net
    counts = ps.load_counts()
    x = np.ascontiguousarray(counts[:, heldin])
    # the count read-outs start at the units' mean rate, as in training
    module.init_session_bias(key, torch.as_tensor(x.mean(0), dtype=torch.float32))
    module.requires_grad_(False)
    trainable = module.session_parameters(key)
    for p in trainable:
        p.requires_grad_(True)

    ctx = session_context(ps, counts, heldout, cfg.eval.flash_window_ms)
    split = ctx["split"]
    gt = ctx["gt"]

    def encode() -> np.ndarray:
        net.eval()
        return net.encode_long(x, key).numpy().astype(np.float32)

    def gt_r2(z: np.ndarray) -> float | None:
        return float(ridge_r2(z, gt, split == "train", split == "test")) if gt is not None else None

    z_null = encode()
    null_ctx = {k: v for k, v in ctx.items() if k != "heldout_counts"}  # gt_r2 and decoding; cobps is slow
    if not full_eval:
        null_ctx["labels"] = None
    null = score_latents(z_null, null_ctx, collapse=False)
    null = {k: null[k] for k in ("gt_r2", "decoding") if k in null}
    curve = {0: gt_r2(z_null)}

    length = module.warm + cfg.train.window + cfg.model.horizon
    ds = WindowDataset([WindowSource.in_memory(x, ps.segments("train"), state_names=known_states)], length,
                       cfg.train.stride)
    if len(ds) == 0:
        raise InputError(dataset_dir, f"too little train data for windows of {length} bins")
    pairs = replay_pairs(ps, ds, []) if cfg.loss.replay_weight > 0 else None
    per_item = 2 if pairs is not None else 1  # a pair is two windows: a batch keeps batch_size windows
    sampler = StateBalancedBatches(ds.windows(0)[1], steps * (cfg.train.batch_size // per_item),
                                   cfg.train.batch_size // per_item, seed,
                                   pairs=(0, *pairs) if pairs is not None else None)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_windows)

    def record(step: int) -> None:
        curve[step] = gt_r2(encode())

    fit = ReadinFit(module, trainable, lr, cfg.train.weight_decay, steps, eval_every, record)
    out_dir = Path(out_dir)
    trainer = make_trainer(out_dir, name="transfer", progress=cfg.train.progress, shown=("train_loss",),
                           max_steps=steps, checkpoints=False)
    t1 = time.perf_counter()
    trainer.fit(fit, loader)  # fit_seconds: the fit's wall time less the gt_r2 checks
    check_diverged(fit, "transfer", out_dir)
    fit_s = time.perf_counter() - t1 - fit.eval_seconds
    losses, replay_losses = fit.losses, fit.replay_losses
    z = encode()
    curve[steps] = gt_r2(z)
    metrics = evaluate_session(net, z, ps, counts, heldin, heldout, cfg, full_eval)
    final = curve[steps]
    steps_to_final = (min(s for s, r in curve.items() if r is not None and r >= final - 0.01)
                      if final is not None else None)
    metrics.update(session=name, dataset_dir=str(Path(dataset_dir).resolve()), teacher_dir=str(tdir.resolve()),
                   steps=int(steps), fit_seconds=round(fit_s, 2), total_seconds=round(time.perf_counter() - t0, 2),
                   lr=float(lr), batch_size=int(cfg.train.batch_size),
                   gt_r2_curve=curve, steps_to_final=steps_to_final, train_loss=losses, train_replay=replay_losses,
                   replay_pairs=len(pairs[0]) if pairs is not None else 0, null=null)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_state = {f"state_readouts.{n}.{k}": v.detach().clone() for n, ro in (module.state_readouts or {}).items()
                 if n.startswith(f"{key}@") for k, v in ro.state_dict().items()}
    with atomic_path(out_dir / "readin.pt") as tmp:
        torch.save({f"readin.{k}": v.detach().clone() for k, v in net.readin[key].state_dict().items()}
                   | {f"count_readout.{k}": v.detach().clone() for k, v in net.count_readout[key].state_dict().items()}
                   | ({"count_gain": net.count_gain[key].detach().clone()} if net.count_gain is not None else {})
                   | per_state | {"heldin": torch.as_tensor(heldin)}, tmp)
    write_latents(out_dir / "latents.npz", z, ps, str(Path(dataset_dir).resolve()), heldin, heldout)
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps({"transfer": metrics}, indent=2, default=float))
    log.info("transfer: %d steps in %.1f s, gt_r2 %.3f (null %.3f)", steps, fit_s, final or float("nan"),
             null.get("gt_r2", float("nan")))
    return out_dir
