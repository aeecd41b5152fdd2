"""Cross-state benchmark (issue 15, deliverable 4): teacher vs PCA, FA, smoothed counts (and CEBRA) per seed.

    python benchmarks/cross_state.py [--vbn] [--seeds 0 1 2] [--units N] [--minutes M] [--quick] [--out DIR]
                                     [--cebra] [key=value ...]

For each seed: simulate (the generic two-state preset, or with ``--vbn`` the default VBN-like session), prepare
(``data.prepare.prepare``; generic: ``states_from="behavior_states:state"``), fit the teacher (``teacher.train.teach``,
default TeacherConfig plus ``key=value`` overrides) and read its ``metrics.json``: the teacher and every baseline
(``eval.baselines``: ``smoothing`` (smoothed counts), ``pca``, ``fa``; ``cebra`` with ``--cebra`` when importable)
are scored there by the same code (``teacher/evaluate.py``) on the same held-out test blocks:

- ``gt_r2``: ridge read-out of the true latent fit on the train blocks of both states, scored on their test blocks;
- ``gt_r2_cross_state``: fit on state A's train blocks, scored on state B's test blocks, both orders and their mean
  (``metrics.latent.cross_state_r2``); the per-order values are in the JSON;
- ``cobps_within_state`` / ``cobps_cross_state``: the held-out units' Poisson GLM fit on a state's train blocks,
  scored on the same state's / the other state's test blocks (``metrics.cobps.cobps_cross_state``);
- train time: the teacher's ``train_seconds``; the baselines' ``eval_seconds`` (fit + scoring) where recorded.

Prints a table (mean +- sd over seeds) and writes ``OUT/cross_state.json`` (every value per seed, plus the table).
``--quick``: 40 units, 3 min (VBN: 60 units, 1 min blocks) and a 2-epoch teacher, 20 s split blocks: a smoke run only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np

METHODS = {"teacher": "neurojepa teacher", "pca": "PCA", "fa": "factor analysis",
           "smoothing": "smoothing (smoothed counts)", "cebra": "CEBRA-Time"}
COLUMNS = ("gt_r2", "gt_r2_cross_state", "cobps_within_state", "cobps_cross_state", "train_s")
QUICK_TEACHER = ["train.max_epochs=2", "train.steps_per_epoch=10", "train.batch_size=16"]


def _scalar(v):
    """A metric as one number: a float as is, a {pair: value, "mean": m} dict as its mean, else None."""
    if isinstance(v, dict):
        v = v.get("mean")
    return float(v) if isinstance(v, (int, float)) and np.isfinite(v) else None


def _row(m: dict, time_key: str) -> dict:
    return dict(gt_r2=_scalar(m.get("gt_r2")), gt_r2_cross_state=_scalar(m.get("gt_r2_cross_state")),
                gt_r2_cross_state_pairs=m.get("gt_r2_cross_state_pairs"),
                cobps_within_state=_scalar(m.get("cobps_within_state")),
                cobps_cross_state=_scalar(m.get("cobps_cross_state")), train_s=_scalar(m.get(time_key)))


def one_seed(seed: int, args, work: Path) -> dict:
    from neurojepa.config import load_config
    from neurojepa.data.prepare import PrepareConfig, prepare
    from neurojepa.synthetic.generic import STATES_TABLE
    from neurojepa.synthetic.simulate import simulate_to_nwb
    from neurojepa.teacher.config import TeacherConfig
    from neurojepa.teacher.train import teach

    d = work / f"seed{seed}"
    t0 = time.perf_counter()
    nwb = simulate_to_nwb(d / "session.nwb", seed=seed, n_units=args.units, minutes=args.minutes,
                          preset="default" if args.vbn else "generic")
    t_sim = time.perf_counter() - t0
    states_from = None if args.vbn else f"{STATES_TABLE}:state"
    pcfg = PrepareConfig(figure=False, split_block_s=20.0) if args.quick else PrepareConfig(figure=False)
    prep = prepare(nwb, d / "prepare", pcfg, states_from=states_from)
    overrides = (QUICK_TEACHER if args.quick else []) + list(args.overrides)
    if args.cebra:
        overrides.append("eval.cebra=true")
    cfg = load_config(TeacherConfig, None, overrides)
    cfg.train.progress = False
    teach(prep, d / "teacher", cfg)
    m = json.loads((d / "teacher" / "metrics.json").read_text())["teacher"]
    rows = {"teacher": _row(m, "train_seconds")}
    for name, b in (m.get("baselines") or {}).items():
        rows[name] = _row(b, "eval_seconds")
    return dict(seed=seed, simulate_s=round(t_sim, 1), methods=rows)


def _fmt(vals: list) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "n/a"
    return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"


def summarise(results: list[dict]) -> list[dict]:
    names = [n for n in METHODS if any(n in r["methods"] for r in results)]
    names += sorted({n for r in results for n in r["methods"]} - set(names))
    table = []
    for n in names:
        row = {"method": METHODS.get(n, n)}
        for c in COLUMNS:
            vals = [r["methods"].get(n, {}).get(c) for r in results]
            vals = [v for v in vals if v is not None]
            row[c] = dict(mean=float(np.mean(vals)), sd=float(np.std(vals)), n=len(vals)) if vals else None
            row[f"{c}_text"] = _fmt(vals)
        table.append(row)
    return table


def print_table(table: list[dict], title: str) -> None:
    heads = ("method", "gt_r2 (both states)", "gt_r2 cross-state", "cobps within-state", "cobps cross-state",
             "train/eval s")
    print(title)
    print(text_table(heads, [[r["method"], *(r[f"{c}_text"] for c in COLUMNS)] for r in table]))


def text_table(heads, lines: list[list[str]]) -> str:
    """Left-aligned columns, two spaces apart (the benchmarks' printed tables)."""
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(heads)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in [list(heads), *lines])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vbn", action="store_true", help="the default VBN-like session instead of the generic preset")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--units", type=int, default=None, help="default: the preset's")
    ap.add_argument("--minutes", type=float, default=None, help="default: the preset's (VBN: per task block)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and a 2-epoch teacher: a smoke run")
    ap.add_argument("--cebra", action="store_true", help="also CEBRA-Time (skipped when cebra is not importable)")
    ap.add_argument("--out", default="runs/bench_cross_state")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="TeacherConfig overrides")
    args = ap.parse_intermixed_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.quick:
        args.units = args.units or (60 if args.vbn else 40)
        args.minutes = args.minutes or (1.0 if args.vbn else 3.0)
    if args.cebra and importlib.util.find_spec("cebra") is None:
        print("cebra is not importable: CEBRA skipped (pip install -e '.[bench]')")
        args.cebra = False
    out = Path(args.out)
    results = [one_seed(s, args, out) for s in args.seeds]
    table = summarise(results)
    preset = "default VBN-like session" if args.vbn else "generic two-state preset"
    print_table(table, f"cross-state benchmark, {preset}, seeds {' '.join(map(str, args.seeds))}"
                       f" (units {args.units or 'preset'}, minutes {args.minutes or 'preset'})")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "cross_state.json"
    path.write_text(json.dumps(dict(preset="vbn-like default" if args.vbn else "generic", seeds=args.seeds,
                                    units=args.units, minutes=args.minutes, quick=args.quick,
                                    overrides=args.overrides, table=table, per_seed=results), indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
