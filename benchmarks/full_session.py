"""Full-size sessions end to end: wall time and peak memory per stage against the session's length (issue 19).

For each length (total minutes of recording), in one run:

1. ``neurojepa simulate --preset vbn`` (2,000 units): 150 min is the preset as it is (two 60-min task blocks plus
   the 25 min of gabor / spontaneous / full-field blocks, the seed's session size); 60 min keeps those blocks and
   shortens the task blocks to 17.4 min; 15 and 30 min are shorter than the extra blocks alone, so they are dropped
   (``vbn_blocks=False``) and the task blocks are 7.5 and 15 min. Its wall time and peak RSS come from its own
   process (``os.wait4``).
2. ``neurojepa run FILE --out RUN [key=value ...]`` under ``/usr/bin/time -v`` (when present; saved as
   ``RUN/time.txt``): wall time and peak RSS of the whole run, and of each stage from ``RUN/status.json`` (the
   pipeline resets VmHWM at every stage's start, docs/scale.md).

Prints one table (and writes it as JSON with ``--json``). What to look for: the peak of every stage stays flat
or grows far below linearly with the length (the session's counts themselves, 1 byte per bin and unit, are the one
thing held whole), and the whole run stays <= 4 GB at 150 min on a 2-core, 24 GB machine.

usage: .venv/bin/python benchmarks/full_session.py [--minutes 15 30 60 150] [--work DIR] [--json F] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

EXTRA_BLOCKS_MIN = 25.2  # gray 10 s + gabors 15 min + spontaneous 5 min + full-field flashes 5 min (simulate.py)
GRAY_MIN = 10 / 60


def sim_args(minutes: float) -> list[str]:
    """``neurojepa simulate`` options for a vbn-preset session of about ``minutes`` in all."""
    if abs(minutes - 150) < 1e-9:
        return ["--preset", "vbn"]
    if minutes >= EXTRA_BLOCKS_MIN + 10:
        return ["--preset", "vbn", "--minutes", f"{(minutes - EXTRA_BLOCKS_MIN) / 2:.2f}"]
    return ["--preset", "vbn", "--minutes", f"{(minutes - GRAY_MIN) / 2:.2f}", "vbn_blocks=false"]


def timed(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """Run cmd (stdout+stderr to log); returns (wall s, peak RSS MB of the child, exit code)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[15, 30, 60, 150])
    ap.add_argument("--work", default="runs/full_session", help="where sessions and runs go")
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the NWB files (else removed after each run)")
    ap.add_argument("overrides", nargs="*", help="run config overrides, e.g. teacher.train.max_epochs=2")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bindir = Path(sys.executable).parent
    nj = str(bindir / "neurojepa")
    time_v = ["/usr/bin/time", "-v", "-o"] if Path("/usr/bin/time").is_file() else None
    rows = []
    for minutes in args.minutes:
        tag = f"m{minutes:g}"
        nwb, run = work / f"{tag}.nwb", work / f"run_{tag}"
        shutil.rmtree(run, ignore_errors=True)
        sim_cmd = [nj, "simulate", "--out", str(nwb), *sim_args(minutes)]
        print(f"[{tag}] {' '.join(sim_cmd[1:])}", flush=True)
        s_wall, s_peak, rc = timed(sim_cmd, work / f"{tag}_simulate.log")
        if rc:
            sys.exit(f"simulate failed for {minutes} min: see {work / f'{tag}_simulate.log'}")
        run.mkdir(parents=True)
        cmd = [nj, "run", str(nwb), "--out", str(run), *args.overrides]
        if time_v:
            cmd = time_v + [str(run / "time.txt")] + cmd
        print(f"[{tag}] {' '.join(cmd)}", flush=True)
        r_wall, r_peak, rc = timed(cmd, work / f"{tag}_run.log")
        status = json.loads((run / "status.json").read_text()) if (run / "status.json").is_file() else {}
        stages = status.get("stages", {})
        qc_file = run / "prepare" / "qc.json"
        prep = json.loads(qc_file.read_text()) if qc_file.is_file() else {}
        metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
        row = dict(minutes=minutes, state=status.get("state", f"exit {rc}"), run_wall_s=round(r_wall, 1),
                   run_peak_mb=round(r_peak, 1), simulate_wall_s=round(s_wall, 1), simulate_peak_mb=round(s_peak, 1),
                   n_bins=prep.get("n_bins"), n_units=prep.get("units_kept"),
                   stages={k: v for k, v in stages.items()},
                   gt_r2=(metrics.get("teacher") or {}).get("gt_r2"),
                   cca=(metrics.get("student") or {}).get("cca_heldout_mean"))
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not args.keep:
            nwb.unlink(missing_ok=True)
    names = ["simulate", "prepare", "teacher", "student", "report"]
    print("\n| minutes | bins | units kept | " + " | ".join(f"{n} s / GB" for n in names)
          + " | whole run s | whole run peak GB | gt_r2 | student CCA |")
    print("|" + "---:|" * (len(names) + 7))
    for r in rows:
        cells = [f"{r['simulate_wall_s']:.0f} / {r['simulate_peak_mb'] / 1024:.2f}"]
        for n in names[1:]:
            st = r["stages"].get(n)
            cells.append(f"{st['seconds']:.0f} / {st['peak_mb'] / 1024:.2f}" if st else "-")
        f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| {r['minutes']:g} | {r['n_bins']} | {r['n_units']} | " + " | ".join(cells)
              + f" | {r['run_wall_s']:.0f} | {r['run_peak_mb'] / 1024:.2f} | {f(r['gt_r2'])} | {f(r['cca'])} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
