"""Quickstart: the main job from Python, then a look at its results.

Run it as ``python examples/quickstart.py [OUT_DIR] [key=value ...]`` (default OUT_DIR: runs/quickstart with the
``fast`` preset, about a minute on 2 cores; pass ``--config default`` for the full-size science run).
"""

import sys

import numpy as np

import neurojepa as nj

out = sys.argv[1] if len(sys.argv) > 1 else "runs/quickstart"
overrides = sys.argv[2:]

# 1. the whole pipeline: simulate -> prepare -> teach -> distill -> report (reruns skip finished stages)
res = nj.run(out=out, config="fast", overrides=overrides)

# 2. headline numbers, all on held-out time blocks
m = res.metrics
print(f"units kept: {m['data']['units_kept']} of {m['data']['units_total']}")
print(f"teacher: gt_r2 = {m['teacher'].get('gt_r2', float('nan')):.3f}, rankme = {m['teacher']['rankme']:.1f} "
      f"of {m['teacher']['embed_dim']}")
print(f"student: held-out CCA = {m['student']['cca_heldout_mean']:.3f} (null {m['student']['cca_null_mean']:.3f}), "
      f"{100 * m['student']['frac_in_band']:.0f}% of neurons at 5-20 Hz")

# 3. the arrays behind them: teacher latents vs ground truth on test blocks, in your own analysis
ds = res.dataset()
z, split = res.teacher_latents(), np.asarray(ds.split).astype(str)
test = split == "test"
print(f"{test.sum()} test bins; latents {z.shape}; ground truth {None if ds.gt_latents is None else ds.gt_latents.shape}")
ds.close()

# 4. the trained spiking student is an ordinary torch module
net = res.student()
print(f"student: {net.n_exc} excitatory + {net.n_inh} inhibitory LIF neurons")
print(f"report: {res.report}")
