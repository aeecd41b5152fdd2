"""Linear ceilings of ground-truth recovery on a prepared simulated session (issue #4, docs/teacher.md).

    python benchmarks/teacher_ceiling.py PREPARED_DIR [--seed 0] [--heldout-fraction 0.2]

Ridge from smoothed sqrt counts of the held-in units (the teacher's input; same unit split as ``neurojepa
teach``) to the true latents, fit on train blocks, scored on test blocks (R^2 per latent, mean over latents):

- ``joint``: one map for both states (what gt_r2 asks of a latent; the raw baseline is this with un-rooted counts);
- ``per-state``: one map per state, each scored on its own state's test blocks (the state-aware linear ceiling);
- ``per-state + lags``: the same with the smoothed counts at lags 0, 5, 10, 20 bins concatenated (causal history);
- ``per-state acausal``: Gaussian smoothing (sigma 20 ms) in both directions: NOT a legal (causal) teacher, the
  reference the simulator's docs quote (0.91).
- ``--supervised STEPS``: the teacher's own causal encoder (TeacherNet, default width and receptive field) trained
  for STEPS steps with MSE to the TRUE latents on train blocks (+ a linear head), then scored like gt_r2 (ridge
  from its 32-dim latent): the ceiling of a causal *nonlinear* encoder of these units, which a self-supervised
  teacher can approach but not be expected to pass (0 skips it; ~30 s for 400 steps on one core).

Prints one row per variant: mean R^2 and the per-latent R^2 (the simulator's latent names).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.ndimage import gaussian_filter1d
from sklearn.metrics import r2_score

from neurojepa.data.dataset import PreparedSession
from neurojepa.metrics.latent import ridge_r2
from neurojepa.teacher.baselines import smooth_counts
from neurojepa.teacher.train import split_units

NAMES = ["img0", "img1", "img2", "img3", "chg/om", "rot_x", "rot_y", "run"]


def _per_state_r2(x, y, state, split, states) -> np.ndarray:
    """Per-dim R^2 on the pooled test rows of ``states``, each state predicted by a map fit on its own train rows."""
    from sklearn.linear_model import RidgeCV

    preds, truth = [], []
    for s in states:
        tr, te = (state == s) & (split == "train"), (state == s) & (split == "test")
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
        m = RidgeCV(alphas=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)).fit((x[tr] - mu) / sd, y[tr])
        preds.append(m.predict((x[te] - mu) / sd))
        truth.append(y[te])
    return r2_score(np.concatenate(truth), np.concatenate(preds), multioutput="raw_values")


def _lagged(x: np.ndarray, lags=(0, 5, 10, 20)) -> np.ndarray:
    """(n, U) -> (n, U * len(lags)): x delayed by each lag (the first bins repeat row 0: causal)."""
    out = []
    for lag in lags:
        out.append(np.concatenate([np.repeat(x[:1], lag, 0), x[:len(x) - lag]]) if lag else x)
    return np.concatenate(out, axis=1)


def supervised_ceiling(x: np.ndarray, gt: np.ndarray, split: np.ndarray, segments, steps: int, seed: int):
    """Per-dim test R^2 of ridge from a causal TeacherNet encoder trained with MSE to the true latents."""
    import torch

    from neurojepa.teacher.config import TeacherConfig
    from neurojepa.teacher.model import TeacherNet

    torch.manual_seed(seed)
    net = TeacherNet.from_config(TeacherConfig(), x.shape[1])  # the default encoder (predictor and read-out unused)
    head = torch.nn.Linear(net.embed_dim, gt.shape[1])
    opt = torch.optim.AdamW([*net.parameters(), *head.parameters()], lr=3e-3, weight_decay=1e-4)
    warm, length = net.receptive_field - 1, 64
    starts = np.concatenate([np.arange(a, b - warm - length, 16) for a, b in segments if b - a > warm + length])
    rng = np.random.default_rng(seed)
    xt, gtt = torch.as_tensor(x), torch.as_tensor(gt, dtype=torch.float32)
    for _ in range(steps):
        idx = rng.choice(starts, 64)[:, None] + np.arange(warm + length)[None]
        loss = (head(net.encode(xt[idx])[:, warm:]) - gtt[idx][:, warm:]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    z = net.encode_long(x).numpy()
    return ridge_r2(z, gt, split == "train", split == "test", per_dim=True)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("prepared")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout-fraction", type=float, default=0.2)
    ap.add_argument("--supervised", type=int, default=400, metavar="STEPS",
                    help="steps of the supervised causal-encoder ceiling (0: skip)")
    args = ap.parse_args()
    ps = PreparedSession.load(args.prepared)
    counts, gt = ps.load_counts(), ps.gt_latents
    if gt is None:
        raise SystemExit("no ground truth in this dataset (not simulated)")
    heldin, _ = split_units(counts.shape[1], args.heldout_fraction, args.seed)
    x = counts[:, heldin].astype(np.float32)
    state, split = ps.labels["state"].to_numpy().astype(str), np.asarray(ps.split).astype(str)
    states = ["active", "passive"]
    train, test = split == "train", split == "test"
    rows: list[tuple[str, np.ndarray]] = []
    t0 = time.perf_counter()
    raw = smooth_counts(x, ps.bin_size, 50.0)
    rows.append(("joint, raw smoothed 50 ms (= raw baseline)", ridge_r2(raw, gt, train, test, per_dim=True)[1]))
    for tau in (20.0, 30.0, 50.0):
        f = smooth_counts(np.sqrt(x), ps.bin_size, tau)
        rows.append((f"joint, sqrt smoothed {tau:g} ms", ridge_r2(f, gt, train, test, per_dim=True)[1]))
        rows.append((f"per-state, sqrt smoothed {tau:g} ms", _per_state_r2(f, gt, state, split, states)))
    f = smooth_counts(np.sqrt(x), ps.bin_size, 30.0)
    lag = _lagged(f)
    rows.append(("joint + lags 0/5/10/20, 30 ms", ridge_r2(lag, gt, train, test, per_dim=True)[1]))
    rows.append(("per-state + lags 0/5/10/20, 30 ms", _per_state_r2(lag, gt, state, split, states)))
    lag2 = _lagged(f, (0, 3, 6, 10, 15, 20, 30))
    rows.append(("per-state + lags 0/3/6/10/15/20/30, 30 ms", _per_state_r2(lag2, gt, state, split, states)))
    ac = gaussian_filter1d(np.sqrt(x), sigma=2.0, axis=0)  # sigma 2 bins = 20 ms, both directions
    rows.append(("joint, acausal Gaussian 20 ms (not causal)", ridge_r2(ac, gt, train, test, per_dim=True)[1]))
    rows.append(("per-state, acausal Gaussian 20 ms (not causal)", _per_state_r2(ac, gt, state, split, states)))
    if args.supervised > 0:
        dims = supervised_ceiling(x, gt, split, ps.segments("train"), args.supervised, args.seed)
        rows.append((f"causal TCN encoder trained ON THE TRUE LATENTS, {args.supervised} steps (supervised)", dims))
    print(f"{ps.n_bins} bins, {len(heldin)} held-in units, test blocks; {time.perf_counter() - t0:.0f} s")
    print(f"| variant | mean | {' | '.join(NAMES)} |")
    print("|---|---|" + "---|" * len(NAMES))
    for name, dims in rows:
        print(f"| {name} | **{dims.mean():.3f}** | " + " | ".join(f"{d:.2f}" for d in dims) + " |")


if __name__ == "__main__":
    main()
