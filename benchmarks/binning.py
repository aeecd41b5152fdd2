"""Binning benchmark: all units of a full-size session at 10 ms, neurojepa vs pynapple vs elephant vs a copy floor.

    .venv/bin/python benchmarks/binning.py                      # 2,000 units, 150 min, ~1e8 spikes
    .venv/bin/python benchmarks/binning.py --units 1000 --minutes 30

Spikes: Poisson trains with log-normal rates (mean ~5.6 Hz, the VBN density: ~1e8 spikes for 2,000 units x 2.5 h),
or ``--source sim`` for ``neurojepa.synthetic.simulate.simulate_session(preset="vbn")`` (slow: its lazy source
regenerates every unit's spikes). Spikes are written once to a temporary .npy and each method runs in a FRESH
subprocess that loads them, so that every peak is measured the same way: peak resident memory (VmHWM, reset via
``/proc/self/clear_refs`` after loading and warm-up) minus resident memory before the call. This counts what
numba allocates, which tracemalloc would miss. Peer objects (pynapple ``TsGroup``, elephant ``neo.SpikeTrain``s) are
built before the measured call; their build time is printed separately.

Times are the best of ``--repeats`` runs (the machine is shared: the best run is the least disturbed one).
The floor is ``np.copy`` of the spike-time array (one read and one write of the same bytes), timed inside each
method's subprocess, interleaved with its repeats, so that a method and its floor see the same machine load.

Count identity: every method's counts are compared with ``bin_spikes_sparse``. Peer edge conventions
(all use edges t0 + k*dt, left-closed): pynapple ``TsGroup.count(dt, ep)`` bins ``[start, end)`` of ``ep``;
elephant ``BinnedSpikeTrain`` shifts a spike that lies within ``tolerance`` (1e-8) *below* an edge into the next
bin (it rounds ``(t - t0)/dt`` before flooring). Peers that would need a dense float64 matrix larger than
``--peer-budget-gb`` are skipped (pynapple returns dense float64).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BIN = 0.01  # s


# ---------------------------------------------------------------------------------------------- spikes
def poisson_spikes(n_units: int, minutes: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(times (n,) float64 s sorted per unit, offsets (n_units + 1,) int64) of homogeneous Poisson trains."""
    rng = np.random.default_rng(seed)
    t_end = minutes * 60.0
    rates = np.clip(rng.lognormal(np.log(5.6) - 0.5, 1.0, n_units), 0.05, 100.0)  # Hz, mean ~5.6
    counts = rng.poisson(rates * t_end)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    times = np.empty(offsets[-1])
    for u in range(n_units):
        seg = times[offsets[u] : offsets[u + 1]]
        seg[:] = rng.uniform(0.0, t_end, counts[u])
        seg.sort()
    return times, offsets


def sim_spikes(n_units: int, minutes: float | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    from neurojepa.synthetic.simulate import simulate_session

    s = simulate_session(seed=seed, n_units=n_units, minutes=minutes, preset="vbn")
    tr = s.spike_times()
    return tr.times, tr.offsets, s.t_stop


# ---------------------------------------------------------------------------------------------- one method
def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def run_method(method: str, data: Path, t_stop: float, repeats: int, out: Path) -> dict:
    """Load spikes, build the method's input, warm up, then time `repeats` calls and measure one call's peak."""
    times = np.load(data / "times.npy")
    offsets = np.load(data / "offsets.npy")
    n_units = len(offsets) - 1
    t_build = time.perf_counter()
    if method in ("neurojepa_sparse", "neurojepa_dense", "numpy_bincount"):
        from neurojepa.data import binning
        from neurojepa.data.session import SpikeTrains

        trains = SpikeTrains(np.arange(n_units, dtype=np.int64), times, offsets)
        small = SpikeTrains(trains.unit_ids, times[:0], np.zeros(n_units + 1, np.int64))
        fn = {
            "neurojepa_sparse": lambda tr: binning.bin_spikes_sparse(tr, 0.0, t_stop, BIN),
            "neurojepa_dense": lambda tr: binning.bin_spikes(tr, 0.0, t_stop, BIN),
            "numpy_bincount": lambda tr: binning.bin_spikes_numpy(tr, 0.0, t_stop, BIN),
        }[method]
        fn(small)  # numba compile (cached on disk after the first run)
        call = lambda: fn(trains)  # noqa: E731
    elif method == "floor_copy":
        call = lambda: np.copy(times)  # noqa: E731
    elif method == "pynapple":
        import pynapple as nap

        ep = nap.IntervalSet(0.0, t_stop)
        group = nap.TsGroup({u: nap.Ts(times[offsets[u] : offsets[u + 1]]) for u in range(n_units)}, time_support=ep)
        warm = nap.IntervalSet(0.0, 1.0)
        nap.TsGroup({0: nap.Ts(np.array([0.5]))}, time_support=warm).count(BIN, warm)  # numba compile
        call = lambda: group.count(BIN, ep)  # noqa: E731
    elif method == "elephant":
        import neo
        import quantities as pq
        from elephant.conversion import BinnedSpikeTrain

        trains = [neo.SpikeTrain(times[offsets[u] : offsets[u + 1]], t_start=0.0, t_stop=t_stop, units="s")
                  for u in range(n_units)]
        call = lambda: BinnedSpikeTrain(trains, bin_size=BIN * pq.s, t_start=0.0 * pq.s,  # noqa: E731
                                        t_stop=t_stop * pq.s)
    else:
        raise ValueError(method)
    t_build = time.perf_counter() - t_build

    rss0 = _rss_kb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    result = call()
    best = time.perf_counter() - t0
    peak_kb = _rss_kb("VmHWM") - rss0
    floor = np.inf
    for _ in range(repeats - 1):
        del result
        t0 = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - t0)
        t0 = time.perf_counter()  # the floor again, interleaved: both see the same load on the shared machine
        np.copy(times)
        floor = min(floor, time.perf_counter() - t0)

    if method != "floor_copy":  # hand the counts back as CSR (n_bins, n_units) for the identity check
        import scipy.sparse as sp

        if method == "pynapple":
            counts = sp.csr_matrix(np.asarray(result.values).astype(np.uint32))
        elif method == "elephant":
            counts = result.sparse_matrix.T.tocsr()
        else:
            counts = sp.csr_matrix(result)
        sp.save_npz(out / f"{method}.npz", counts.astype(np.uint32), compressed=False)
    return {"method": method, "seconds": best, "floor_s": floor, "peak_mb": peak_kb / 1024, "build_s": t_build}


# ---------------------------------------------------------------------------------------------- edge conventions
def edge_conventions(seed: int = 0) -> None:
    """Print which peers reproduce the np.histogram reference for spikes on and one ulp below 10 ms edges."""
    import logging

    import neo
    import pynapple as nap
    import quantities as pq
    from elephant.conversion import BinnedSpikeTrain

    from neurojepa.data.binning import bin_edges, bin_spikes
    from neurojepa.data.session import SpikeTrains

    t0, t1 = 0.0137, 10.0137
    edges = bin_edges(t0, t1, BIN)
    rng = np.random.default_rng(seed)
    on = np.sort(edges[rng.choice(len(edges) - 1, 300, replace=False)])
    cases = {"300 on edges": on, "300 one ulp below edges": np.nextafter(on, -np.inf),
             "3000 uniform": np.sort(rng.uniform(t0, t1, 3000))}
    print("edge conventions (bins differing from the per-unit np.histogram reference):")
    for name, x in cases.items():
        ref = np.histogram(x[x < edges[-1]], edges)[0]
        ours = bin_spikes(SpikeTrains.from_list([0], [x]), t0, t1, BIN)[:, 0]
        ep = nap.IntervalSet(t0, t1)
        pn = nap.TsGroup({0: nap.Ts(x)}, time_support=ep).count(BIN, ep).values[:, 0]
        logging.disable(logging.WARNING)  # elephant logs each tolerance shift; the count below says it
        try:
            el = BinnedSpikeTrain([neo.SpikeTrain(x, t_start=t0, t_stop=t1, units="s")], bin_size=BIN * pq.s,
                                  t_start=t0 * pq.s, t_stop=t1 * pq.s).to_array()[0]
        finally:
            logging.disable(logging.NOTSET)
        diff = {k: int(np.sum(v != ref)) if v.shape == ref.shape else f"shape {v.shape}"
                for k, v in (("neurojepa", ours), ("pynapple", pn), ("elephant", el))}
        print(f"  {name:26s} " + ", ".join(f"{k} {v}" for k, v in diff.items()))


# ---------------------------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--units", type=int, default=2000)
    p.add_argument("--minutes", type=float, default=150.0)
    p.add_argument("--source", choices=["poisson", "sim"], default="poisson")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peer-budget-gb", type=float, default=4.0,
                   help="skip peers/dense methods whose dense float64 (n_bins x n_units) exceeds this")
    p.add_argument("--_child", nargs=4, metavar=("METHOD", "DATA", "T_STOP", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._child:
        method, data, t_stop, out = args._child
        print(json.dumps(run_method(method, Path(data), float(t_stop), args.repeats, Path(out))))
        return 0

    import scipy.sparse as sp

    with tempfile.TemporaryDirectory(prefix="nj_bench_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        if args.source == "sim":
            times, offsets, t_stop = sim_spikes(args.units, args.minutes)
        else:
            times, offsets = poisson_spikes(args.units, args.minutes)
            t_stop = args.minutes * 60.0
        np.save(tmp / "times.npy", times)
        np.save(tmp / "offsets.npy", offsets)
        n_spikes, spike_mb = len(times), times.nbytes / 2**20
        del times
        n_bins = int(np.floor(t_stop / BIN + 1e-9))
        dense_gb = n_bins * args.units * 8 / 2**30
        print(f"{args.units} units, {t_stop / 60:.1f} min, {n_spikes / 1e6:.1f} M spikes "
              f"({spike_mb:.0f} MB of float64 spike times), {n_bins} bins of {BIN * 1e3:.0f} ms; "
              f"dense float64 counts would take {dense_gb:.1f} GB (generated in {time.perf_counter() - t0:.0f} s)")

        methods = ["floor_copy", "neurojepa_sparse"]
        try:
            edge_conventions()
        except ImportError as err:
            print(f"edge conventions skipped: {err} (pip install neurojepa[bench])")
        if dense_gb <= args.peer_budget_gb:
            methods += ["neurojepa_dense", "numpy_bincount", "pynapple", "elephant"]
        else:
            print(f"peers and dense methods skipped: {dense_gb:.1f} GB > --peer-budget-gb {args.peer_budget_gb}")
        rows = []
        for m in methods:
            cmd = [sys.executable, __file__, "--repeats", str(args.repeats), "--_child", m, str(tmp), repr(t_stop),
                   str(tmp)]
            env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode != 0:
                print(f"{m}: FAILED\n{res.stderr[-2000:]}")
                continue
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))

        ref = sp.load_npz(tmp / "neurojepa_sparse.npz")
        ours = next(r["seconds"] for r in rows if r["method"] == "neurojepa_sparse")
        print(f"\n| method | time (s, best of {args.repeats}) | np.copy floor (s) | x floor | x neurojepa "
              f"| peak extra memory (MB) | x spike array | build (s) | counts identical |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            same = "-" if r["method"] == "floor_copy" else "(reference)"
            f = tmp / f"{r['method']}.npz"
            if f.exists() and r["method"] != "neurojepa_sparse":
                other = sp.load_npz(f)
                diff = abs(other.astype(np.int64) - ref.astype(np.int64))
                same = "yes" if other.shape == ref.shape and diff.nnz == 0 else (
                    f"NO: shape {other.shape}" if other.shape != ref.shape
                    else f"NO: {diff.nnz} cells differ ({int(diff.sum())} spikes)")
            print(f"| {r['method']} | {r['seconds']:.3f} | {r['floor_s']:.3f} | {r['seconds'] / r['floor_s']:.1f} "
                  f"| {r['seconds'] / ours:.2f} "
                  f"| {r['peak_mb']:.0f} | {r['peak_mb'] / spike_mb:.2f} | {r['build_s']:.1f} | {same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
