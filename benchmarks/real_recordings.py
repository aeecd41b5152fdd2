"""Real-recording benchmark (issue 16): the teacher vs the NLB baselines on NWB files nobody here simulated.

    python benchmarks/real_recordings.py FILE.nwb [FILE.nwb ...] [--states-from TABLE[:COLUMN]] [--seeds 0]
                                         [--ablation] [--out DIR] [key=value ...]

For each file and seed: prepare (``data.prepare.prepare``, default QC; ``--states-from`` for a two-state file), fit
the teacher (``teacher.train.teach``, default TeacherConfig plus ``key=value`` overrides) and read its
``metrics.json``, where the teacher and the baselines are scored by the same code (``teacher/evaluate.py``) on the
same held-out units and test blocks:

- ``cobps``: co-smoothing bits/spike of the held-out units (Poisson GLM, each unit's penalty chosen on validation
  bins, fit on the train bins: ``metrics/cobps.py``). ``smoothing`` is NLB's smoothing baseline (causally smoothed
  held-in counts -> GLM); ``pca`` and ``fa`` are fit on the train bins;
- ``forecast_r2``: skill of the forecast of the held-in units' counts over the next K bins against the mean-rate
  forecast (0: no better than each unit's mean rate). The teacher forecasts with its predictor; the baselines with a
  linear forecast read-out (``metrics/latent.py``);
- ``rankme`` (effective dimension of the latent on test bins), train / eval seconds;
- with two or more states: ``gt_r2``-free cross-state metrics (``cobps_cross_state``, ``forecast_r2_cross_state``).

Prints one table per file (mean +- sd over seeds) with the teacher / smoothing cobps ratio, and writes
``OUT/real_recordings.json``. ``--ablation`` runs three teachers per file and seed, same steps and seeds: the full
teacher, the count anchor alone (``loss.regulariser=none loss.lam=1``: no prediction loss, no SIGReg) and the JEPA
terms alone (``loss.count_weight=0``) (issue 16, deliverable 5; the table is in docs/teacher.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_state import _fmt, text_table  # noqa: E402  (the benchmarks share one table format)

BASELINES = {"smoothing": "smoothing", "pca": "PCA", "fa": "factor analysis", "cebra": "CEBRA-Time"}
COLUMNS = ("cobps", "forecast_r2", "rankme", "gt_r2", "cobps_cross_state", "forecast_r2_cross_state", "seconds")
ABLATION = {"full teacher": [], "count anchor alone": ["loss.regulariser=none", "loss.lam=1.0"],
            "JEPA terms alone": ["loss.count_weight=0"]}


def _scalar(v):
    if isinstance(v, dict):
        v = v.get("mean")
    return float(v) if isinstance(v, (int, float)) and np.isfinite(v) else None


def _row(m: dict, seconds: float | None) -> dict:
    out = {c: _scalar(m.get(c)) for c in COLUMNS if c != "seconds"}
    out["seconds"] = seconds
    return out


def one_run(nwb: Path, seed: int, overrides: list[str], args, work: Path) -> dict:
    """Prepare (once per file) and teach one teacher; {method: row} from its metrics.json."""
    from neurojepa.config import load_config
    from neurojepa.data.prepare import PrepareConfig, prepare
    from neurojepa.teacher.config import TeacherConfig
    from neurojepa.teacher.train import teach

    prep = work / "prepare"
    if not (prep / "dataset.h5").is_file():
        pcfg = PrepareConfig(figure=False, **({"split_block_s": args.split_block_s} if args.split_block_s else {}))
        prepare(nwb, prep, pcfg, states_from=args.states_from)
    cfg = load_config(TeacherConfig, None, [f"train.seed={seed}", *overrides])
    cfg.train.progress = False
    out = work / ("teacher_" + "_".join(o.replace("=", "-") for o in overrides) if overrides else "teacher")
    out = out.with_name(f"{out.name}_seed{seed}")
    t0 = time.perf_counter()
    teach(prep, out, cfg)
    wall = time.perf_counter() - t0
    m = json.loads((out / "metrics.json").read_text())["teacher"]
    rows = {"teacher": _row(m, _scalar(m.get("train_seconds")))}
    for name, b in (m.get("baselines") or {}).items():
        rows[name] = _row(b, _scalar(b.get("eval_seconds")))
    return dict(seed=seed, overrides=overrides, wall_s=round(wall, 1), n_heldin=m.get("n_heldin_units"),
                n_heldout=m.get("n_heldout_units"), methods=rows)


def summarise(runs: list[dict], label: str = "teacher") -> list[dict]:
    """Rows {method, column: {mean, sd, n}, column_text} over the runs (seeds) of one file and teacher config."""
    names = ["teacher"] + [n for n in BASELINES if any(n in r["methods"] for r in runs)]
    table = []
    for n in names:
        row = {"method": label if n == "teacher" else BASELINES[n]}
        for c in COLUMNS:
            vals = [v for v in (r["methods"].get(n, {}).get(c) for r in runs) if v is not None]
            row[c] = dict(mean=float(np.mean(vals)), sd=float(np.std(vals)), n=len(vals)) if vals else None
            row[f"{c}_text"] = _fmt(vals)
        table.append(row)
    return table


def print_table(table: list[dict], title: str) -> None:
    cols = [c for c in COLUMNS if any(r[c] is not None for r in table)]
    print(title)
    print(text_table(["method", *cols], [[r["method"], *(r[f"{c}_text"] for c in cols)] for r in table]))


def ratio(table: list[dict], key: str = "cobps", over: str = "smoothing") -> float | None:
    """The teacher's mean ``key`` over the ``over`` baseline's (None when either is missing or the base <= 0)."""
    rows = {r["method"]: r for r in table}
    t, b = rows.get("teacher") or table[0], rows.get(BASELINES[over])
    if not t or not b or not t[key] or not b[key] or b[key]["mean"] <= 0:
        return None
    return t[key]["mean"] / b[key]["mean"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", metavar="FILE.nwb | key=value",
                    help="NWB recordings and TeacherConfig overrides")
    ap.add_argument("--states-from", default=None, help="TABLE[:COLUMN] of brain states (two-state files)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--ablation", action="store_true", help="full teacher vs count anchor alone vs JEPA terms alone")
    ap.add_argument("--out", default="runs/bench_real")
    ap.add_argument("--split-block-s", type=float, default=None, help="split block length (default: prepare's)")
    args = ap.parse_intermixed_args(argv)
    overrides = [a for a in args.files if "=" in a]
    args.files = [Path(a) for a in args.files if "=" not in a]
    if not args.files:
        ap.error("no NWB file given")
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    variants = ABLATION if args.ablation else {"teacher": []}
    report = {}
    for nwb in args.files:
        if not nwb.is_file():
            ap.error(f"{nwb}: no such file")
        report[nwb.name] = {}
        for label, extra in variants.items():
            runs = [one_run(nwb, s, [*overrides, *extra], args, out / nwb.stem) for s in args.seeds]
            table = summarise(runs, label)
            units = f"{runs[0]['n_heldin']} held-in + {runs[0]['n_heldout']} held-out units"
            print_table(table, f"\n{nwb.name} ({units}), {label}, seeds {' '.join(map(str, args.seeds))}")
            r = ratio(table)
            print(f"teacher / smoothing cobps: {r:.2f}x" if r is not None else "teacher / smoothing cobps: n/a")
            report[nwb.name][label] = dict(table=table, cobps_over_smoothing=r, runs=runs)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "real_recordings.json"
    path.write_text(json.dumps(dict(files=[str(f) for f in args.files], seeds=args.seeds, overrides=overrides,
                                    states_from=args.states_from, results=report), indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
