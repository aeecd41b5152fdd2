"""One training step (forward + backward) of the student: fused network vs the plain snntorch per-step loop.

Same seed, same inputs (including the background noise), same math: the script checks that the spikes are identical
and the gradients agree, then prints the median time of each and their ratio. Run on one thread:

    .venv/bin/python benchmarks/student_speed.py [--batch 32] [--bins 40] [--units 300] [--repeats 5]

The fused path saves (a) the per-step input projection (computed once per 10 ms bin instead of per 1 ms step) --
shared by both here, since both use ``StudentNet.input_current`` --, (b) the autograd graph of T small steps: its
forward loop runs without autograd and its backward is hand-written BPTT, one matmul and a few fused element-wise
ops per step, and (c) the T per-step recurrent weight-gradient matmuls, replaced by one over all steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from neurojepa.student.config import StudentConfig
from neurojepa.student.network import StudentNet
from neurojepa.synthetic.toy import synthetic_session


def _step(net: StudentNet, fwd, x: torch.Tensor, target: torch.Tensor):
    torch.manual_seed(1)  # identical background noise for both paths
    out = fwd(x)
    loss = (out["readout"] - target).pow(2).mean() + out["spikes"].mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    return out["spikes"].detach(), grads


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bins", type=int, default=40, help="10 ms bins per window (x10 LIF steps)")
    ap.add_argument("--units", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = StudentConfig()
    counts, lat, _ = synthetic_session(args.units, args.batch * args.bins, 16, seed=0)
    x = torch.tensor(counts.reshape(args.batch, args.bins, args.units).astype(np.float32))
    target = torch.tensor(lat.reshape(args.batch, args.bins, 16))
    net = StudentNet(args.units, 16, cfg, bin_size=0.01)  # synthetic_session's 10 ms bins
    net.calibrate_bias(x[:8])

    s_fast, g_fast = _step(net, net.forward, x, target)
    s_ref, g_ref = _step(net, net.forward_reference, x, target)
    assert torch.equal(s_fast, s_ref), "spikes differ between the fused and the snntorch network"
    worst = max(((g_fast[k] - g_ref[k]).abs().max() / g_ref[k].abs().max().clamp_min(1e-12)).item() for k in g_ref)
    times = {"fused": [], "snntorch": []}
    for _ in range(args.repeats):
        for name, fwd in (("fused", net.forward), ("snntorch", net.forward_reference)):
            t0 = time.perf_counter()
            _step(net, fwd, x, target)
            times[name].append(time.perf_counter() - t0)
    fused, ref = statistics.median(times["fused"]), statistics.median(times["snntorch"])
    steps = args.bins * net.substeps
    rate = s_fast.mean().item() / cfg.dt
    print(f"student step fwd+bwd: batch {args.batch}, {steps} LIF steps of {cfg.dt * 1e3:g} ms, "
          f"{cfg.n_exc}E+{cfg.n_inh}I neurons, {args.units} inputs, mean rate {rate:.1f} Hz, {args.threads} thread(s)")
    print(f"spikes identical: yes ({int(s_fast.sum())} spikes); max relative gradient difference {worst:.1e}")
    print(f"fused    {fused * 1e3:8.1f} ms  (median of {args.repeats})")
    print(f"snntorch {ref * 1e3:8.1f} ms")
    print(f"speed-up {ref / fused:.2f}x")


if __name__ == "__main__":
    main()
