"""Estimators: the teacher and the student on count arrays, without the pipeline's directories.

Run it as ``python examples/estimators.py [OUT_DIR]`` (default OUT_DIR: runs/estimators; under 30 s on 2 cores).
The sizes here are tiny for speed (a few minutes of a small simulated session, a few training steps), so the
numbers are a smoke test, not the science: ``neurojepa run`` with the default preset is that.
"""

import sys
from pathlib import Path

import numpy as np

import neurojepa as nj
from neurojepa.data.binning import bin_spikes

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/estimators")

# 1. counts (n_bins, n_units) in 10 ms bins: here a simulated session binned with the toolkit's binning, but any
#    array of whole spike counts will do; one state name per bin, and the simulator's true latents for scoring
session = nj.simulate_session(seed=0, n_units=40, minutes=1.5)
bin_size = 0.01
counts = bin_spikes(session.spike_times(), session.t_start, session.t_stop, bin_size)
centres = session.t_start + (np.arange(len(counts)) + 0.5) * bin_size
states = session.state_at(centres)
truth = session.ground_truth.latents_at(centres)
heldout = np.arange(0, counts.shape[1], 5)  # every 5th unit hidden from the encoder, for co-smoothing
print(f"counts {counts.shape}, states {sorted(set(states) - {''})}")

# 2. the teacher: options are the pipeline's TeacherConfig keys; splits deal 20 s blocks like `neurojepa prepare`
teacher = nj.Teacher(**{"model.width": 16, "model.embed_dim": 8, "loss.replay_dims": 8, "model.horizon": 4,
                        "train.window": 16, "train.batch_size": 16, "train.steps_per_epoch": 10, "train.max_epochs": 2,
                        "train.val_windows": 32, "train.progress": False, "splits.block_s": 20})
z = teacher.fit_transform(counts, states, heldout_units=heldout, bin_size=bin_size)
m = teacher.score(counts, states, gt_latents=truth)  # on test blocks the teacher never trained on
# (20 training steps: PCA still wins here; the default preset's training beats it, README "Status")
print(f"teacher: latents {z.shape}, gt_r2 = {m['gt_r2']:.3f} (PCA {m['baselines']['pca']['gt_r2']:.3f}), "
      f"cobps = {m['cobps']:.3f} bits/spike, forecast_r2 = {m['forecast_r2']:.3f}, rankme = {m['rankme']:.1f}")

# 3. save and load: a torch state dict and a JSON config (no pickle); the reloaded teacher gives the same latents
teacher.save(out / "teacher")
again = nj.Teacher.load(out / "teacher")
print(f"reloaded teacher: same latents = {np.array_equal(again.transform(counts, states), z)}")

# 4. the student: an E/I spiking network driven by the counts, distilled from the teacher's latents
student = nj.Student(n_exc=64, n_inh=16, max_steps=20, batch_size=8, window=16, readout_refit_steps=20,
                     eval_spike_chunks=4, splits={"block_s": 20})
student.fit(counts, z, states, bin_size=bin_size)
sim = student.simulate(counts)
s = student.score(counts, z, states)
print(f"student: spikes {sim['spikes'].shape} (1 ms steps x neurons), readout {sim['readout'].shape}, "
      f"held-out CCA = {s['cca_heldout_mean']:.3f} (null {s['cca_null_mean']:.3f}), "
      f"median rate {s['rate_hz_median']:.1f} Hz, Dale violations {s['dale_violations']}")
student.save(out / "student")
print(f"reloaded student: same readout = "
      f"{np.array_equal(nj.Student.load(out / 'student').simulate(counts)['readout'], sim['readout'])}")
