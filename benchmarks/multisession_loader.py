"""Multi-session loader benchmark: peak memory and windows/s for 1, 4, 16 and 64 prepared sessions.

    .venv/bin/python benchmarks/multisession_loader.py                  # 50 units x 2 min blocks, 1/4/16/64
    .venv/bin/python benchmarks/multisession_loader.py --sessions 1 4 --batches 100

Data: ``--distinct`` (default 4) sessions from :func:`neurojepa.synthetic.simulate.simulate_sessions` are prepared once
into a temporary directory and COPIED (not linked: a link would let HDF5 and the page cache share one file) to
reach 64 directories. Each measurement runs in a FRESH subprocess: imports, then the peak-RSS counter is reset
(``/proc/self/clear_refs`` = 5) and RSS noted; the loader is built and ``--batches`` batches of ``--batch-size``
windows of ``--window`` bins are drawn through ``torch.utils.data.DataLoader`` (``num_workers=0``,
:class:`~neurojepa.data.samplers.SessionBatchSampler`, counts stacked); the table gives peak
RSS (VmHWM) minus RSS before building, and windows/s over the drawing (best of ``--repeats``).

``naive`` is the reference a loader must beat: the same :class:`~neurojepa.data.windows.WindowDataset` with every
session's counts loaded into memory (in-memory sources) instead of streamed from HDF5; it draws the same batches
(the same sampler over the same window order). Its memory grows with the sessions; the streamed loader's must not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def child(args) -> None:
    """One measurement, printed as a JSON line."""
    import torch
    from torch.utils.data import DataLoader

    from neurojepa.data.dataset import PreparedSession
    from neurojepa.data.samplers import SessionBatchSampler
    from neurojepa.data.windows import WindowDataset, WindowSource

    torch.set_num_threads(1)
    dirs = sorted(Path(args.root).glob("s*"))[: args.k]
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _rss_kb("VmRSS")
    ds = WindowDataset.from_prepared(dirs, args.window, args.stride, split="train")
    sampler = SessionBatchSampler(ds, args.batch_size, batches_per_session=-(-args.batches // len(dirs)))
    if args.loader == "naive":  # same windows in the same global order, same batches, counts in memory
        sessions = [PreparedSession.load(d) for d in dirs]
        mem = WindowDataset([WindowSource.in_memory(ps.load_counts(), ps.segments("train"), state_names=names)
                             for ps, names in zip(sessions, ds.state_names)], args.window, args.stride)
        assert len(mem) == len(ds)
        ds = mem
    loader = DataLoader(ds, batch_sampler=sampler,
                        collate_fn=lambda items: torch.stack([it["counts"] for it in items]))
    best = float("inf")
    for _ in range(args.repeats):
        t0, n = time.perf_counter(), 0
        for k, batch in enumerate(loader):
            if k == args.batches:
                break
            n += len(batch)
        best = min(best, (time.perf_counter() - t0) / n)
    print(json.dumps({"k": args.k, "loader": args.loader, "windows": len(ds), "peak_mb": (_rss_kb("VmHWM") - before) / 1024,
                      "windows_per_s": 1 / best}))


def make_sessions(root: Path, distinct: int, total: int, units: int, minutes: float) -> None:
    from neurojepa.data.prepare import PrepareConfig, prepare_session
    from neurojepa.synthetic.simulate import simulate_sessions

    src = []
    for i, s in enumerate(simulate_sessions(distinct, seed=0, n_units=units, minutes=minutes)):
        src.append(prepare_session(s, root / f"s{i:03d}", PrepareConfig(figure=False)))
    for i in range(distinct, total):
        shutil.copytree(src[i % distinct], root / f"s{i:03d}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--distinct", type=int, default=4, help="distinct simulated sessions (the rest are copies)")
    p.add_argument("--units", type=int, default=50)
    p.add_argument("--minutes", type=float, default=2.0, help="minutes per task block")
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--root", default=None, help="reuse prepared sessions s000.. here (made if empty)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--loader", default="streamed", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    tmp = None
    root = Path(args.root) if args.root else Path(tmp := tempfile.mkdtemp(prefix="nj-msl-"))
    try:
        if len(list(root.glob("s*"))) < max(args.sessions):
            t0 = time.perf_counter()
            make_sessions(root, min(args.distinct, max(args.sessions)), max(args.sessions), args.units, args.minutes)
            print(f"prepared {max(args.sessions)} sessions in {time.perf_counter() - t0:.1f} s under {root}")
        rows = []
        for k in args.sessions:
            for loader in ("streamed", "naive"):
                cmd = [sys.executable, __file__, "--child", "--k", str(k), "--loader", loader, "--root", str(root)]
                for name in ("window", "stride", "batch_size", "batches", "repeats"):
                    cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"\n{args.units} units x {args.minutes:g} min blocks per session, window {args.window} bins, "
              f"batch {args.batch_size}, {args.batches} batches; peak RSS above the pre-build RSS\n")
        print("| sessions | windows (train) | streamed peak MB | streamed windows/s | naive peak MB | naive windows/s |")
        print("|---:|---:|---:|---:|---:|---:|")
        for k in args.sessions:
            s, n = (next(r for r in rows if r["k"] == k and r["loader"] == name) for name in ("streamed", "naive"))
            print(f"| {k} | {s['windows']} | {s['peak_mb']:.1f} | {s['windows_per_s']:.0f} | {n['peak_mb']:.1f} | "
                  f"{n['windows_per_s']:.0f} |")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
