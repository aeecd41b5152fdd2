"""Teacher vs CEBRA-Time on the same simulated session: wall time to train, gt_r2 and cross-state decoding.

    python benchmarks/teacher_vs_cebra.py PREPARED_DIR [--out DIR] [--cebra-iterations N] [key=value ...]

PREPARED_DIR is the output of ``neurojepa simulate --out sim.nwb && neurojepa prepare sim.nwb --out PREP``.
CEBRA comes with the optional ``bench`` extra (``pip install -e '.[bench]'``); without it the CEBRA row says so.
Both models see the same held-in units and are scored by the same code (neurojepa.teacher.evaluate) on the same
held-out test blocks. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--out", default="runs/bench_teacher")
    ap.add_argument("--cebra-iterations", type=int, default=2000)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()
    torch.set_num_threads(1)

    from neurojepa.config import load_config
    from neurojepa.data.dataset import PreparedSession
    from neurojepa.teacher.baselines import cebra_latents
    from neurojepa.teacher.config import TeacherConfig
    from neurojepa.teacher.evaluate import score_latents, session_context
    from neurojepa.teacher.train import teach

    cfg = load_config(TeacherConfig, None, args.overrides)
    cfg.train.progress = False
    out = teach(args.dataset, args.out, cfg)
    teacher = json.loads((out / "metrics.json").read_text())["teacher"]
    rows = [("teacher (LeJEPA)", teacher["train_seconds"], teacher)]

    ps = PreparedSession.load(args.dataset)
    lat = np.load(out / "latents.npz")
    counts = ps.load_counts()
    heldin, heldout = lat["heldin_units"], lat["heldout_units"]
    ctx = session_context(ps, counts, heldout, cfg.eval.flash_window_ms)
    t0 = time.perf_counter()
    emb = cebra_latents(counts[:, heldin], ctx["split"] == "train", ps.bin_size, cfg.model.embed_dim,
                        cfg.eval.smooth_ms, cfg.train.seed, max_iterations=args.cebra_iterations)
    if emb is None:
        rows.append(("cebra (not installed)", float("nan"), {}))
    else:
        rows.append(("cebra-time", time.perf_counter() - t0, score_latents(emb, ctx)))
    for name in ("pca", "smoothing"):
        if name in teacher.get("baselines", {}):
            rows.append((name, float("nan"), teacher["baselines"][name]))

    def cross(m, task):
        vals = [v[task]["balanced_accuracy"] for v in m.get("decoding", {}).get("cross", {}).values() if task in v]
        return float(np.mean(vals)) if vals else float("nan")

    print(f"{'model':22s} {'train s':>8s} {'gt_r2':>7s} {'gt_r2 x':>8s} {'img x':>7s} {'chg x':>7s}")
    for name, secs, m in rows:
        print(f"{name:22s} {secs:8.1f} {m.get('gt_r2', float('nan')):7.3f} "
              f"{m.get('gt_r2_cross_state', float('nan')):8.3f} {cross(m, 'image'):7.3f} {cross(m, 'is_change'):7.3f}")
    print("(x: cross-state, averaged over active->passive and passive->active; img/chg: balanced accuracy)")


if __name__ == "__main__":
    main()
