"""One training step (forward + backward) of the student: fused network vs the plain snntorch per-step loop.

Same seed, same inputs (including the background noise), same math: for every network size the script checks that
the spikes are identical and the gradients agree, then prints the median time of each path and the ratios, all in
one run. On CPU (one thread by default) it compares the fused loop with snntorch; on a GPU (``--device cuda``) it
also times the fused loop replayed as CUDA graphs (``cuda_graphs=True``), with the ordinary element-wise kernels and
with one fused kernel per step (``network.STEP_KERNELS``; both together are the GPU default):

    .venv/bin/python benchmarks/student_speed.py [--neurons 320] [--batch 32] [--bins 40] [--units 300]
    python benchmarks/student_speed.py --device cuda --neurons 320 4096 16384 --out speed.json

``--neurons`` is the population size, split 4:1 into E and I like the default (256 + 64 = 320). ``--rank R`` also
times, at every size, the student with low-rank recurrence (``rec_rank = R``: W = U V^T through R excitatory and R
inhibitory pools) against its own snntorch loop (the same check of spikes and gradients), and prints how much faster
its fused step is than the dense one's:

    .venv/bin/python benchmarks/student_speed.py --neurons 320 1280 4096 --rank 32 --repeats 3

``--config NAME`` starts from a preset's student (e.g. ``student_slow``: low-rank recurrence, slow synapses,
per-neuron slow adaptation, feed-forward inhibition, 2 ms steps) instead of the defaults; ``--neurons`` and
``--rank`` still set the sizes (the preset's own rank with ``--rank`` 0 and a preset). On a GPU every variant --
dense or low-rank, scalar or per-neuron adaptation -- replays as CUDA graphs with one kernel per step:

    python benchmarks/student_speed.py --device cuda --neurons 320 4096 16384 --config student_slow --out speed.json

The fused path saves (a) the per-step input projection (computed once per 10 ms bin instead of per 1 ms step) --
shared by both here, since both use ``StudentNet.input_current`` --, (b) the autograd graph of T small steps: its
forward loop runs without autograd and its backward is hand-written BPTT, one matmul and a few fused element-wise
ops per step, and (c) the T per-step recurrent weight-gradient matmuls, replaced by one over all steps. On a GPU,
where launching a step's small kernels from Python costs more than running them, (d) CUDA graphs replay each loop's
kernels without Python, and (e) one NVRTC-compiled element-wise kernel per step replaces a dozen small ones.
Results: docs/student.md ("Speed").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import numpy as np
import torch

from neurojepa.student.config import StudentConfig
from neurojepa.student import network
from neurojepa.student.network import StudentNet
from neurojepa.synthetic.toy import synthetic_session


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _step(net: StudentNet, fwd, x: torch.Tensor, target: torch.Tensor):
    torch.manual_seed(1)  # identical background noise for all paths
    out = fwd(x)
    loss = (out["readout"] - target).pow(2).mean() + out["spikes"].mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    return out["spikes"].detach(), grads


def _paths(net: StudentNet, device: str) -> dict:
    def fused(graphs: bool, kernels: bool = False):
        def run(x):
            net.cfg.cuda_graphs = graphs
            network.STEP_KERNELS = kernels
            return net.forward(x)
        return run

    paths = {"snntorch": net.forward_reference, "fused": fused(False)}
    if device.startswith("cuda"):
        paths["fused+graphs"] = fused(True)
        paths["+step kernels"] = fused(True, True)  # one element-wise kernel per step: the GPU default
    return paths


def profile(net: StudentNet, fwd, x, target, rows: int = 12) -> None:
    """The GPU kernels of one step, by total time (torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _step(net, fwd, x, target)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60))


def base_config(name: str | None) -> StudentConfig:
    """The defaults, or a preset's student section (``--config``)."""
    if not name:
        return StudentConfig()
    from neurojepa.pipeline import load_stage_config

    return load_stage_config("student", name)


def bench_size(n_neurons: int, args, rank: int = 0) -> dict:
    n_inh = n_neurons // 5
    cfg = dataclasses.replace(args.base, n_exc=n_neurons - n_inh, n_inh=n_inh, rec_rank=rank)
    counts, lat, _ = synthetic_session(args.units, args.batch * args.bins, 16, seed=0)
    x = torch.tensor(counts.reshape(args.batch, args.bins, args.units).astype(np.float32), device=args.device)
    target = torch.tensor(lat.reshape(args.batch, args.bins, 16), device=args.device)
    torch.manual_seed(0)
    net = StudentNet(args.units, 16, cfg, bin_size=0.01).to(args.device)  # synthetic_session's 10 ms bins
    net.calibrate_bias(x[:8])
    paths = _paths(net, args.device)

    ref_spikes, ref_grads = _step(net, paths["snntorch"], x, target)  # also the warm-up (and graph capture)
    row = {"neurons": n_neurons, "n_exc": cfg.n_exc, "n_inh": cfg.n_inh, "rec_rank": rank, "config": args.config,
           "batch": args.batch,
           "lif_steps": args.bins * net.substeps, "inputs": args.units, "device": args.device,
           "mean_rate_hz": ref_spikes.float().mean().item() / cfg.dt, "spikes": int(ref_spikes.sum()), "paths": {}}
    for name, fwd in list(paths.items()):
        if name == "snntorch":
            continue
        try:
            spikes, grads = _step(net, fwd, x, target)
        except Exception as e:  # noqa: BLE001 -- one failing path must not lose the others' numbers
            print(f"  {name}: failed ({type(e).__name__}: {e})")
            row["paths"][name] = {"error": f"{type(e).__name__}: {e}"}
            del paths[name]
            continue
        worst = max(((grads[k] - ref_grads[k]).abs().max() / ref_grads[k].abs().max().clamp_min(1e-12)).item()
                    for k in ref_grads)
        row["paths"][name] = {"spikes_identical": bool(torch.equal(spikes, ref_spikes)),
                              "max_rel_grad_diff": worst}
    times = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, fwd in paths.items():
            _sync(args.device)
            t0 = time.perf_counter()
            _step(net, fwd, x, target)
            _sync(args.device)
            times[name].append(time.perf_counter() - t0)
    if args.device.startswith("cuda") and n_neurons == args.profile:
        for name in ("fused", "fused+graphs"):
            print(f"\nprofile, {name}, {n_neurons} neurons:")
            try:
                profile(net, paths[name], x, target)
            except Exception as e:  # noqa: BLE001 -- a profiler that fails must not lose the timings
                print(f"  failed ({type(e).__name__}: {e})")
    ref = statistics.median(times["snntorch"])
    row["paths"].setdefault("snntorch", {})
    for name in paths:
        med = statistics.median(times[name])
        row["paths"][name].update(ms=med * 1e3, speedup=ref / med)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", type=int, nargs="+", default=[320], help="population sizes (E:I 4:1)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bins", type=int, default=40, help="10 ms bins per window (x10 LIF steps)")
    ap.add_argument("--units", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", help="also write the results as JSON here")
    ap.add_argument("--profile", type=int, default=0, help="GPU: print the kernels of one step at this size")
    ap.add_argument("--rank", type=int, default=0, help="also time low-rank recurrence of this rank (rec_rank)")
    ap.add_argument("--config", help="start from this preset's student (e.g. student_slow) instead of the defaults")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("student_speed: --device cuda but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} thread(s)"
    args.base = base_config(args.config)  # read once, used by every size
    dt_ms = args.base.dt * 1e3
    print(f"student training step (forward + backward), {where}, torch {torch.__version__}: "
          f"{args.config or 'default'} student, batch {args.batch}, {args.bins * round(10 / dt_ms)} LIF steps of "
          f"{dt_ms:g} ms, {args.units} inputs; median of {args.repeats}")
    ranks = [0, args.rank] if args.rank > 0 else [args.base.rec_rank if args.config else 0]
    rows, ok = [], True
    for n, rank in ((n, r) for n in args.neurons for r in ranks):
        row = bench_size(n, args, rank)
        rows.append(row)
        kind = f", low-rank recurrence (rank {rank})" if rank else ""
        print(f"\n{row['n_exc']}E+{row['n_inh']}I neurons{kind}, mean rate {row['mean_rate_hz']:.1f} Hz, "
              f"{row['spikes']} spikes")
        dense = rows[-2] if len(rows) > 1 and rows[-2]["neurons"] == n and rows[-2]["rec_rank"] == 0 else None
        if rank and dense and "ms" in dense["paths"].get("fused", {}) and "ms" in row["paths"].get("fused", {}):
            row["fused_speedup_over_dense"] = dense["paths"]["fused"]["ms"] / row["paths"]["fused"]["ms"]
            print(f"  fused step {row['fused_speedup_over_dense']:.2f}x faster than the dense network's")
        for name, r in row["paths"].items():
            if "error" in r:
                ok = False
                continue
            check = "" if name == "snntorch" else (
                f"  spikes identical: {'yes' if r['spikes_identical'] else 'NO'}, "
                f"max relative gradient difference {r['max_rel_grad_diff']:.1e}")
            ok &= r.get("spikes_identical", True)
            print(f"  {name:13s} {r['ms']:9.1f} ms  {r['speedup']:6.2f}x{check}")
        if args.out:  # after every size: a run cut short keeps what it measured
            with open(args.out, "w") as f:
                json.dump({"torch": torch.__version__, "device": where, "rows": rows}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
