"""Progress for people and for log files.

On a terminal, training shows Lightning's tqdm bar. When stderr is not a terminal (``make demo > log``, SLURM,
CI) a bar redrawn with carriage returns makes an unreadable log, so :class:`LineProgress` prints instead one line
per validation (an epoch of the teacher, ``val_every`` steps of the student) with its key numbers::

    teacher epoch 3/8: step 150, train_loss 322.1, val_loss 318.7, 61 s

:func:`progress_callbacks` picks one of the two; ``progress=False`` in a config silences both.
"""

from __future__ import annotations

import sys
import time
from typing import Sequence

from lightning.pytorch.callbacks import Callback, TQDMProgressBar


def is_terminal(stream=None) -> bool:
    """Whether ``stream`` (default stderr, where progress goes) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


class LineProgress(Callback):
    """One line on stderr after each validation: epoch (or step), the chosen metrics and the elapsed time."""

    def __init__(self, name: str, keys: Sequence[str], per: str = "epoch"):
        self.name, self.keys, self.per = name, tuple(keys), per
        self._t0 = time.perf_counter()

    def on_fit_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        metrics = trainer.callback_metrics
        parts = [f"{k} {float(metrics[k]):.4g}" for k in self.keys if k in metrics]
        if self.per == "epoch":
            head = f"{self.name} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: step {trainer.global_step}"
        else:
            head = f"{self.name} step {trainer.global_step}/{trainer.max_steps}"
        print(", ".join([head, *parts, f"{time.perf_counter() - self._t0:.0f} s"]), file=sys.stderr, flush=True)


def progress_callbacks(name: str, enabled: bool, keys: Sequence[str], per: str = "epoch"
                       ) -> tuple[list[Callback], bool]:
    """(callbacks, enable_progress_bar) for a Lightning Trainer: a bar on a terminal, lines in a file, or nothing."""
    if not enabled:
        return [], False
    if is_terminal():
        return [TQDMProgressBar(refresh_rate=10)], True
    return [LineProgress(name, keys, per)], False
