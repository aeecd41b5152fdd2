"""One way to train: the Lightning ``Trainer`` factory and the NaN guard shared by every model.

The single- and multi-session teacher, the student and the transfer of a teacher to a new session all train
through :func:`make_trainer`: the same determinism (``deterministic=True``), gradient clipping (1.0), loggers
(CSV, and TensorBoard where asked, under ``out/logs``), progress display (:mod:`~neurojepa.progress`),
hardware options (``train.*``, :func:`hardware`) and checkpoints (:class:`GoodCheckpoint`, which saves nothing
once the NaN guard fired, so the last good checkpoint stays). Data-parallel sampling is done by the batch samplers
(:mod:`~neurojepa.data.samplers`), so Lightning's distributed sampler is off.

:class:`NanGuard` is a LightningModule mixin: a step whose loss is not finite is skipped (the module's
``training_step`` returns ``self.guard(loss)``, which is None then) and a non-finite gradient is zeroed before the
optimiser sees it; after ``nan_patience`` such steps in a row training stops and ``diverged_at`` holds the step
(:func:`check_diverged` turns that into one clear error naming the last good checkpoint).
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from .errors import InputError
from .progress import progress_callbacks

log = logging.getLogger(__name__)

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "64-true")


class NanGuard:
    """Mixin for a LightningModule: skip non-finite steps, stop after ``nan_patience`` in a row (module docstring)."""

    nan_patience: int = 1
    diverged_at: int | None = None
    bad_steps: int = 0

    def guard(self, loss: torch.Tensor, what: str = "loss") -> torch.Tensor | None:
        """``loss`` if finite; else None (Lightning then skips the optimiser step), counted and logged."""
        if torch.isfinite(loss):
            self.bad_steps = 0
            return loss
        self._bad(f"non-finite {what}")
        return None

    def _bad(self, why: str) -> None:
        self.bad_steps += 1
        step = int(self.global_step)
        log.warning("%s at step %d, skipped (%d in a row)", why, step, self.bad_steps)
        if self.bad_steps >= self.nan_patience:
            self.diverged_at = step
            self.trainer.should_stop = True

    def on_before_optimizer_step(self, optimizer):
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if any(not torch.isfinite(g).all() for g in grads):
            for g in grads:
                g.zero_()
            self._bad("non-finite gradient")


class GoodCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that refuses to save once the NaN guard stopped training: the last good checkpoint stays."""

    def _save_checkpoint(self, trainer, filepath):
        if getattr(trainer.lightning_module, "diverged_at", None) is None:
            super()._save_checkpoint(trainer, filepath)


def hardware(t) -> dict:
    """The Trainer's hardware options from a ``train`` config section (accelerator, devices, strategy, num_nodes,
    precision), checked. The CPU defaults (auto on a machine without CUDA, 1 device, 32-true) are one process.

    Lightning detects SLURM (``SLURM_NTASKS`` etc.) and torchelastic on its own; nothing here depends on it."""
    if t.accelerator not in ACCELERATORS:
        raise InputError("train.accelerator", f"'{t.accelerator}' is not one of {', '.join(ACCELERATORS)}")
    if t.devices < 1 or t.num_nodes < 1:
        raise InputError("train.devices", f"devices ({t.devices}) and num_nodes ({t.num_nodes}) must be >= 1")
    if t.precision not in PRECISIONS:
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

    out = Path(out)
    last = out / "last.ckpt"
    if resume and not last.is_file():
        raise InputError(last, "nothing to resume from (no last.ckpt)")
    out.mkdir(parents=True, exist_ok=True)
    if not resume and getattr(rank_zero_only, "rank", 0) == 0:
        shutil.rmtree(out / "logs", ignore_errors=True)
        for name in ("last.ckpt", "best.ckpt"):
            (out / name).unlink(missing_ok=True)
    return last


def make_trainer(out: Path, *, name: str, progress: bool, shown: tuple[str, ...], train=None,
                 max_epochs: int = -1, max_steps: int = -1, patience: int | None = None,
                 every_n_steps: int | None = None, val_every: int | None = None, max_minutes: float | None = None,
                 tensorboard: bool = False, checkpoints: bool = True, callbacks: list[Callback] | None = None,
                 **options) -> L.Trainer:
    """The one Lightning Trainer of the project.

    out: run directory (checkpoints, ``logs/csv``, ``logs/tb``); name, progress, shown: the progress display
    (:func:`~neurojepa.progress.progress_callbacks`); train: a config section with the hardware options
    (:func:`hardware`; None: one CPU process). Checkpoints: by epoch (``patience`` given: ``best.ckpt`` by lowest
    ``val_loss``, ``last.ckpt`` every epoch, early stopping after ``patience`` epochs without improvement) or by
    step (``every_n_steps``: ``last.ckpt`` every so many steps); ``checkpoints=False`` writes none.
    val_every: validate every so many steps instead of each epoch; max_minutes: a wall-clock cap.
    options: passed on to ``L.Trainer`` (e.g. ``limit_val_batches``)."""
    cbs: list[Callback] = []
    if checkpoints and patience is not None:
        # two writers: best.ckpt (lowest val loss) and last.ckpt (every epoch); ModelCheckpoint's own save_last
        # only writes when a new best is saved, which would leave last.ckpt behind after the best epoch
        cbs += [GoodCheckpoint(dirpath=out, filename="best", monitor="val_loss", mode="min",
                               enable_version_counter=False),
                GoodCheckpoint(dirpath=out, filename="last", every_n_epochs=1, enable_version_counter=False)]
    elif checkpoints and every_n_steps:
        cbs.append(GoodCheckpoint(dirpath=out, filename="step{step}", save_last=True, save_top_k=0,
                                  every_n_train_steps=every_n_steps))
    if patience is not None:
        cbs.append(EarlyStopping("val_loss", patience=patience, mode="min"))
    per = "epoch" if patience is not None else "step"
    shown_cbs, bar = progress_callbacks(name, progress, shown, per=per)
    loggers = [CSVLogger(out, name="logs", version="csv")]
    if tensorboard:
        loggers.append(TensorBoardLogger(out, name="logs", version="tb"))
    hw = hardware(train) if train is not None else dict(accelerator="cpu", devices=1)
    if val_every is not None:
        options.update(val_check_interval=val_every, check_val_every_n_epoch=None)
    if max_minutes is not None:
        options["max_time"] = datetime.timedelta(minutes=max_minutes)
    return L.Trainer(default_root_dir=out, max_epochs=max_epochs, max_steps=max_steps, **hw, deterministic=True,
                     callbacks=cbs + shown_cbs + list(callbacks or []), gradient_clip_val=1.0, logger=loggers,
                     log_every_n_steps=10, num_sanity_val_steps=0, enable_progress_bar=bar,
                     enable_model_summary=False, use_distributed_sampler=False,
                     enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in cbs), **options)


def best_val_loss(trainer: L.Trainer) -> float | None:
    """The lowest ``val_loss`` the best-checkpoint callback saw (None without one, or before any validation)."""
    best = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor == "val_loss"), None)
    return float(best.best_model_score) if best is not None and best.best_model_score is not None else None


def check_diverged(module, what: str, last: Path) -> None:
    """One clear InputError when the NaN guard stopped ``module``'s training."""
    if getattr(module, "diverged_at", None) is not None:
        raise InputError(what, f"training diverged (non-finite loss or gradient at step {module.diverged_at}); "
                               f"the last good checkpoint is {last}; try a lower learning rate")
