"""Training length vs quality of the main job's defaults: the curve behind `make demo`'s time budget (docs/budget.md).

    python benchmarks/demo_budget.py RUN_DIR [--epochs 4 5 6 7 8] [--steps 150 200 250 350] [--out /tmp/budget]

RUN_DIR is a finished `neurojepa run` (its prepare/ and teacher/ stages are reused; the teacher curve alone needs
only RUN_DIR/prepare, e.g. from `neurojepa prepare` of another seed's session).

Teacher: one training run of max(--epochs) epochs with a checkpoint every epoch; the point for N epochs evaluates
the checkpoint a ``train.max_epochs=N`` run would keep (the lowest val loss among the first N epochs: the learning
rate is constant and early stopping never fires before epoch 7, so the first N epochs of the long run are exactly
the N-epoch run). Student: one `distill` per --steps value (its cosine schedule depends on max_steps), with the
unconstrained ablation, against RUN_DIR's teacher. Every number is held-out, as in metrics.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from neurojepa.config import load_config
from neurojepa.data.dataset import PreparedSession
from neurojepa.student.config import StudentConfig
from neurojepa.student.train import distill
from neurojepa.teacher.config import TeacherConfig
from neurojepa.teacher.evaluate import evaluate_teacher
from neurojepa.teacher.train import encode_states, fit_teacher


class _EpochClock(Callback):
    """Wall time at the end of each training epoch (s since fit start)."""

    def __init__(self):
        self.t0, self.ends = time.perf_counter(), []

    def on_train_epoch_end(self, trainer, pl_module):
        self.ends.append(time.perf_counter() - self.t0)


def _val_losses(out: Path) -> list[float]:
    rows = list(csv.DictReader(open(out / "logs" / "csv" / "metrics.csv")))
    return [float(r["val_loss"]) for r in rows if r.get("val_loss")]


def teacher_curve(run_dir: Path, epochs: list[int], out: Path, threads: int = 0) -> list[dict]:
    ps = PreparedSession.load(run_dir / "prepare")
    cfg = load_config(TeacherConfig, None, [f"train.max_epochs={max(epochs)}", "train.progress=false",
                                            f"train.threads={threads}"])
    every = ModelCheckpoint(dirpath=out / "epochs", filename="e{epoch}", save_top_k=-1, every_n_epochs=1,
                            enable_version_counter=False, auto_insert_metric_name=False)
    clock = _EpochClock()
    fit = fit_teacher(ps, out, cfg, callbacks=[every, clock])
    losses = _val_losses(out)
    rows = []
    for n in epochs:
        best = int(np.argmin(losses[:n]))
        state = torch.load(out / "epochs" / f"e{best}.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        fit.module.load_state_dict(state)
        fit.module.net.eval()
        z = encode_states(fit.module, fit.x, ps.labels)
        m = evaluate_teacher(fit.module.net, z, ps, fit.counts, fit.heldin, fit.heldout, cfg, [], [])
        img = [m["decoding"]["cross"][p]["image"]["balanced_accuracy"] for p in m["decoding"]["cross"]]
        rows.append(dict(epochs=n, kept_epoch=best + 1, train_s=round(clock.ends[n - 1], 1), gt_r2=m["gt_r2"],
                         gt_r2_cross_state=m["gt_r2_cross_state"], rankme=m["rankme"], cobps=m["cobps"],
                         image_cross_min=min(img)))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def student_curve(run_dir: Path, steps: list[int], out: Path, threads: int = 0) -> list[dict]:
    rows = []
    for s in steps:
        cfg = load_config(StudentConfig, None, [f"max_steps={s}", "progress=false", f"threads={threads}"])
        t0 = time.perf_counter()
        d = distill(run_dir / "prepare", run_dir / "teacher", out / f"student_{s}", cfg, unconstrained=True)
        m = json.loads((d / "metrics.json").read_text())["student"]
        rows.append(dict(steps=s, wall_s=round(time.perf_counter() - t0, 1), train_s=m["train_seconds"],
                         cca=m["cca_heldout_mean"], cca_unconstrained=m["cca_heldout_mean_unconstrained"],
                         ratio=m["cca_ratio_constrained_to_unconstrained"], frac_in_band=m["frac_in_band"],
                         cv_isi=m["cv_isi_median"], decoding_ratio_min=m["decoding_ratio_min"]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--epochs", type=int, nargs="*", default=[4, 5, 6, 7, 8])
    ap.add_argument("--steps", type=int, nargs="*", default=[200, 250, 350])
    ap.add_argument("--out", type=Path, default=Path("/tmp/demo_budget"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: every available CPU)")
    args = ap.parse_args()
    if args.epochs:
        teacher_curve(args.run_dir, sorted(args.epochs), args.out / "teacher", args.threads)
    if args.steps:
        student_curve(args.run_dir, sorted(args.steps), args.out, args.threads)


if __name__ == "__main__":
    main()
