"""What non-spiking models of the student's own input reach on its CCA target (issue 17, docs/student.md).

    python benchmarks/student_ceiling.py PREPARED_DIR TEACHER_DIR [--student DIR ...] [--features 3000] [--seed 0]

The student sees every recorded unit's counts and must carry the teacher's latents in its E spikes. Held-out CCA
exactly as the student is scored (``StudentConfig`` ridge, directions fit on the train blocks after the burn-in,
correlations on the test blocks, mean over the teacher's dims), for reference models of the same input:

- ``linear filters``: the counts through the student's readout filters (causal exponentials, ``readout_taus``),
  i.e. the best linear read-out of a noiseless relay of the input; the score at a time-shifted teacher is its null;
- ``random features``: the same plus ``--features`` random ReLU units of them (a rate network with fixed random
  hidden weights and a trained linear read-out): what some nonlinearity buys without training the hidden layer;
- each ``--student DIR``: its saved ``readout.npz``, scored here by the same code (equals its ``cca_heldout_mean``).

Memory: the feature matrix is bins x (units x filters + features) float64 (~8 GB for the default session at 3,000
features); ``--features 0`` skips the random features.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from neurojepa.data.dataset import PreparedSession
from neurojepa.metrics.cca import circular_shift, heldout_cca
from neurojepa.student.config import StudentConfig
from neurojepa.student.evaluate import train_mask


def filtered_counts(counts: np.ndarray, bin_size: float, taus) -> np.ndarray:
    """(n, U) counts -> (n, U * K): each unit through each causal exponential filter (unit DC gain), the student's
    readout filters applied to its input."""
    out = []
    for tau in taus:
        a = np.exp(-bin_size / tau)
        out.append(lfilter([1 - a], [1, -a], np.asarray(counts, np.float64), axis=0))
    return np.concatenate(out, axis=1)


def random_relu(x: np.ndarray, train: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n random ReLU units of x (standardised with train statistics; Gaussian weights of variance 1/dims, biases
    N(0, 0.5^2)), (rows, n)."""
    rng = np.random.default_rng(seed)
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    w = rng.normal(0.0, 1.0 / np.sqrt(x.shape[1]), (x.shape[1], n))
    return np.maximum(((x - mu) / sd) @ w + rng.normal(0.0, 0.5, n), 0.0)


def blocks(split: np.ndarray, burn_in: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row masks as the student is scored: its split's blocks after the first burn_in bins (the
    train half is the student's own :func:`~neurojepa.student.evaluate.train_mask`)."""
    test = (np.arange(len(split)) >= burn_in) & (np.asarray(split).astype(str) == "test")
    return train_mask(split, None, None, burn_in), test


def score(feats: np.ndarray, latents: np.ndarray, train: np.ndarray, test: np.ndarray, ridge: float) -> dict:
    """Held-out CCA of feats against latents: {"mean", "pairs", "features"}."""
    r = heldout_cca(feats[train], latents[train], feats[test], latents[test], ridge)
    return dict(mean=float(np.mean(r)), pairs=[float(v) for v in r], features=int(feats.shape[1]))


def reference_scores(counts: np.ndarray, latents: np.ndarray, split: np.ndarray, bin_size: float,
                     cfg: StudentConfig, n_features: int, seed: int) -> dict:
    """Mean held-out canonical correlation of each reference model: {name: {"mean", "pairs", "features"}}, plus
    the linear model's null (``linear filters, null``: the teacher's latents circularly shifted in time)."""
    tr, te = blocks(split, cfg.burn_in)
    x = filtered_counts(counts, bin_size, cfg.readout_taus)
    out = {"linear filters": score(x, latents, tr, te, cfg.ridge),
           "linear filters, null": score(x, circular_shift(latents, np.random.default_rng(seed)), tr, te, cfg.ridge)}
    if n_features > 0:
        feats = np.concatenate([x, random_relu(x, tr, n_features, seed)], axis=1)
        out["random features"] = score(feats, latents, tr, te, cfg.ridge)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prepared")
    ap.add_argument("teacher", help="a teacher directory (its latents.npz)")
    ap.add_argument("--student", nargs="*", default=[], help="student directories (their readout.npz)")
    ap.add_argument("--features", type=int, default=3000, help="random ReLU features (0 = linear filters only)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for d in [args.teacher, *args.student]:  # before minutes of features
        need = "latents.npz" if d == args.teacher else "readout.npz"
        if not (Path(d) / need).is_file():
            ap.error(f"{d}: no {need}")
    cfg = StudentConfig()
    ps = PreparedSession.load(args.prepared)
    latents = np.load(Path(args.teacher) / "latents.npz")["latents"].astype(np.float64)
    counts = np.asarray(ps.load_counts()[:], np.float64)
    scores = reference_scores(counts, latents, ps.split, ps.bin_size, cfg, args.features, args.seed)
    tr, te = blocks(ps.split, cfg.burn_in)
    for d in args.student:
        z = np.load(Path(d) / "readout.npz")["readout"].astype(np.float64)
        scores[f"student {d}"] = score(z, latents, tr, te, cfg.ridge)
    print(f"held-out CCA against {args.teacher} ({latents.shape[1]} dims; {int(te.sum())} test bins)")
    width = max(len(k) for k in scores)
    for name, s in scores.items():
        pairs = s.get("pairs")
        tail = f"  pairs 1-9 {np.mean(pairs[:9]):.3f}, 17+ {np.mean(pairs[16:]):.3f}" if pairs and len(pairs) > 16 else ""
        print(f"{name.ljust(width)}  {s['mean']:.3f}  ({s['features']} features){tail}")


if __name__ == "__main__":
    main()
