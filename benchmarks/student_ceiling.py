"""What non-spiking models of the student's own input reach on its CCA target (issue 17, docs/student.md).

    python benchmarks/student_ceiling.py PREPARED_DIR TEACHER_DIR [--student DIR ...] [--features 3000]
        [--gru 320] [--gru-steps 1000] [--poisson 320 1280 ...] [--poisson-gain 1.0] [--order 1] [--seed 0]
        [--bands 0.5 2 8]

The student sees every recorded unit's counts and must carry the teacher's latents in its E spikes. Held-out CCA
exactly as the student is scored (``StudentConfig`` ridge, directions fit on the train blocks after the burn-in,
correlations on the test blocks, mean over the teacher's dims), for reference models of the same input:

- ``linear filters``: the counts through the student's readout filters (causal exponentials, ``readout_taus``),
  i.e. the best linear read-out of a noiseless relay of the input; the score at a time-shifted teacher is its null;
- ``random features``: the same plus ``--features`` random ReLU units of them (a rate network with fixed random
  hidden weights and a trained linear read-out): what some nonlinearity buys without training the hidden layer;
- ``trained GRU`` (``--gru HIDDEN``): a gated recurrent rate network of HIDDEN units on the counts, trained with the
  student's own CCA loss on the student's training windows (burn-in + window bins, batch, Adam, ``--gru-steps``) and
  run on the same causal chunks the student is evaluated on; its hidden state is scored. What a trained, compact,
  unconstrained, non-spiking network of the student's size reaches: the gap between it and the student is what
  spikes, Dale's principle and the rate band cost; the gap between it and 1 is what the size and training cost.
- ``GRU as N Poisson neurons`` (``--poisson N ...``, with ``--gru``): the trained GRU's code sent through spikes,
  the noise a spiking student's readout cannot avoid. Each hidden unit's standardised state z becomes a rate
  ``10 Hz * exp(g z - g^2 / 2)`` (mean 10 Hz, log-normal modulation of depth ``--poisson-gain`` g), emitted by
  N / HIDDEN independent Poisson neurons (``--order`` k > 1: gamma renewal neurons, more regular) whose summed
  counts (what the best linear read-out of identical copies reads) go through the readout filters. Their median CV
  of ISI (inside 2 s trials, as the student's) is printed beside the score, so a code's precision can be read
  against the firing the student must keep.
- each ``--student DIR``: its saved ``readout.npz``, scored here by the same code (equals its ``cca_heldout_mean``).

``--bands F1 F2 ...`` (Hz) adds where each model's gap sits in time scale: the same held-out CCA with its features
and the teacher's latents both band-passed into < F1, F1-F2, ..., > Fk Hz (zero-phase 4th-order Butterworth over the
whole session, so an analysis, not a causal readout; :func:`band_scores`).

Memory: the feature matrix is bins x (units x filters + features) float64 (~8 GB for the default session at 3,000
features); ``--features 0`` skips the random features.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.signal import butter, lfilter, sosfiltfilt

from neurojepa.data.dataset import PreparedSession
from neurojepa.data.intervals import Intervals
from neurojepa.metrics.cca import circular_shift, heldout_cca
from neurojepa.student.config import StudentConfig
from neurojepa.student.evaluate import chunk_inputs, train_mask


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


def score(feats: np.ndarray, latents: np.ndarray, train: np.ndarray, test: np.ndarray, ridge: float,
          bands=(), bin_size: float = 0.0) -> dict:
    """Held-out CCA of feats against latents: {"mean", "pairs", "features"}, and with band edges (Hz) "bands":
    the same within each frequency band (:func:`band_scores`)."""
    r = heldout_cca(feats[train], latents[train], feats[test], latents[test], ridge)
    out = dict(mean=float(np.mean(r)), pairs=[float(v) for v in r], features=int(feats.shape[1]))
    if len(bands):
        out["bands"] = band_scores(feats, latents, train, test, ridge, bin_size, bands)
    return out


def check_band_edges(edges, bin_size: float) -> list[float]:
    """The band edges as floats if they ascend strictly inside (0, Nyquist) Hz; else a ValueError saying so."""
    edges, nyquist = [float(e) for e in edges], 0.5 / bin_size
    if not edges or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] <= 0 or edges[-1] >= nyquist:
        raise ValueError(f"band edges must ascend strictly inside (0, {nyquist:g}) Hz, got {edges}")
    return edges


def band_scores(z: np.ndarray, latents: np.ndarray, train: np.ndarray, test: np.ndarray, ridge: float,
                bin_size: float, edges) -> dict[str, float]:
    """Held-out CCA (mean over pairs) of z against latents within each frequency band cut at ``edges`` (Hz,
    ascending): {"< e1 Hz", "e1-e2 Hz", ..., "> ek Hz"}. Both sides are filtered alike, zero-phase (4th-order
    Butterworth, ``sosfiltfilt``) over the whole session, then scored on the same train / test rows."""
    edges = check_band_edges(edges, bin_size)
    bands = [(None, edges[0])] + list(zip(edges[:-1], edges[1:])) + [(edges[-1], None)]
    out = {}
    for lo, hi in bands:
        if lo is None:
            sos, name = butter(4, hi, "lowpass", fs=1 / bin_size, output="sos"), f"< {hi:g} Hz"
        elif hi is None:
            sos, name = butter(4, lo, "highpass", fs=1 / bin_size, output="sos"), f"> {lo:g} Hz"
        else:
            sos, name = butter(4, [lo, hi], "bandpass", fs=1 / bin_size, output="sos"), f"{lo:g}-{hi:g} Hz"
        zf, lf = sosfiltfilt(sos, z, axis=0), sosfiltfilt(sos, latents, axis=0)
        out[name] = score(zf, lf, train, test, ridge)["mean"]
    return out


def window_starts(train: np.ndarray, length: int) -> np.ndarray:
    """Every t whose window [t, t + length) lies wholly in train rows (train: (n,) bool), ascending."""
    return Intervals.runs(train).window_starts(length, 1)[0]


def trained_gru(counts: np.ndarray, latents: np.ndarray, train: np.ndarray, cfg: StudentConfig, hidden: int,
                steps: int, seed: int) -> np.ndarray:
    """Hidden states (n, hidden) of a GRU trained with the student's CCA loss (readout Linear(hidden, D)) on random
    burn_in + window training windows, then run causally on chunks of ``cfg.eval_chunk`` bins, each after
    ``cfg.eval_warmup`` bins of warm-up, as the student is evaluated. Input: log1p counts standardised on the train
    rows."""
    import torch

    from neurojepa.metrics.cca import cca_loss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = np.log1p(counts)
    x = ((x - x[train].mean(0)) / (x[train].std(0) + 1e-6)).astype(np.float32)
    gru = torch.nn.GRU(x.shape[1], hidden, batch_first=True)
    head = torch.nn.Linear(hidden, latents.shape[1])
    opt = torch.optim.Adam([*gru.parameters(), *head.parameters()], lr=cfg.lr / 5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    length = cfg.burn_in + cfg.window
    starts = window_starts(train, length)
    xt, yt = torch.from_numpy(x), torch.from_numpy(latents.astype(np.float32))
    for step in range(steps):
        idx = torch.from_numpy(starts[rng.integers(0, len(starts), cfg.batch_size)])
        rows = idx[:, None] + torch.arange(length)
        h, _ = gru(xt[rows])
        z = head(h[:, cfg.burn_in:]).reshape(-1, latents.shape[1])
        loss = cca_loss(z, yt[rows[:, cfg.burn_in:]].reshape(-1, latents.shape[1]), cfg.ridge)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*gru.parameters(), *head.parameters()], 1.0)
        opt.step()
        sched.step()
        if (step + 1) % max(steps // 10, 1) == 0:
            print(f"  GRU step {step + 1}/{steps}: CCA loss {loss.item():.2f}", flush=True)
    out = np.zeros((len(x), hidden), np.float32)
    with torch.no_grad():
        for s0 in range(0, len(x), 64 * cfg.eval_chunk):
            cs = np.arange(s0, min(s0 + 64 * cfg.eval_chunk, len(x)), cfg.eval_chunk)
            h, _ = gru(torch.from_numpy(chunk_inputs(x, cs, cfg.eval_chunk, cfg.eval_warmup)))
            for i, c in enumerate(cs):
                n = min(cfg.eval_chunk, len(x) - c)
                out[c:c + n] = h[i, cfg.eval_warmup:cfg.eval_warmup + n].numpy()
    return out


def recode_rates(h: np.ndarray, train: np.ndarray, gain: float) -> np.ndarray:
    """Hidden states (n, H) -> rates (n, H) in Hz: 10 exp(gain z - gain^2 / 2), z standardised on the train rows
    (mean 10 Hz for Gaussian z), capped at 200 Hz."""
    z = (h - h[train].mean(0)) / (h[train].std(0) + 1e-6)
    return np.minimum(10.0 * np.exp(gain * z - gain * gain / 2), 200.0)


def renewal_train(rate: np.ndarray, order: int, bin_size: float, rng: np.random.Generator):
    """One gamma renewal neuron of ``order`` k driven by rate (n,) Hz held over each bin (k = 1: Poisson; at a
    constant rate its CV of ISI is 1 / sqrt(k)), by time rescaling: unit-rate gamma(k) intervals in the cumulative
    intensity, mapped back to time (exact for bin-wise constant rates). Returns (counts per bin (n,), spike times s)."""
    lam = np.concatenate([[0.0], np.cumsum(rate * bin_size)])
    draw = int(lam[-1] * 1.1) + 100
    events = np.cumsum(rng.gamma(order, 1.0 / order, draw))
    while events[-1] < lam[-1]:
        events = np.concatenate([events, events[-1] + np.cumsum(rng.gamma(order, 1.0 / order, draw))])
    events = events[events < lam[-1]]
    counts = np.diff(np.searchsorted(events, lam)).astype(np.float64)
    return counts, np.interp(events, lam, np.arange(len(lam)) * bin_size)


def renewal_counts(rates: np.ndarray, copies: int, order: int, bin_size: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Summed spike counts per bin of ``copies`` independent renewal neurons of ``order`` at each column's rate (Hz),
    (n, H). Order 1 (Poisson) draws the sum directly: the sum of Poisson neurons is Poisson."""
    if order == 1:
        return rng.poisson(copies * rates * bin_size).astype(np.float64)
    return np.stack([sum(renewal_train(rates[:, j], order, bin_size, rng)[0] for _ in range(copies))
                     for j in range(rates.shape[1])], axis=1)


def renewal_cv(rates: np.ndarray, order: int, bin_size: float, rng: np.random.Generator,
               trial_s: float = 2.0) -> float:
    """Median over columns of the CV of ISI of one renewal neuron at that column's rates (Hz), with intervals taken
    inside consecutive trials of ``trial_s`` seconds, as the student's are inside its 2 s evaluation chunks."""
    cvs = []
    for j in range(rates.shape[1]):
        t = renewal_train(rates[:, j], order, bin_size, rng)[1]
        isi = np.diff(t)[np.diff((t // trial_s).astype(np.int64)) == 0]
        if len(isi) >= 3:
            cvs.append(isi.std(ddof=1) / isi.mean())
    return float(np.median(cvs)) if cvs else float("nan")


def reference_scores(counts: np.ndarray, latents: np.ndarray, split: np.ndarray, bin_size: float,
                     cfg: StudentConfig, n_features: int, seed: int, gru_hidden: int = 0,
                     gru_steps: int = 1000, poisson: tuple[int, ...] = (), poisson_gain: float = 1.0,
                     order: int = 1, bands=()) -> dict:
    """Mean held-out canonical correlation of each reference model: {name: {"mean", "pairs", "features"}, and
    "bands" with band edges}, plus the linear model's null (``linear filters, null``: the teacher's latents
    circularly shifted in time)."""
    tr, te = blocks(split, cfg.burn_in)
    by = dict(bands=bands, bin_size=bin_size)
    x = filtered_counts(counts, bin_size, cfg.readout_taus)
    out = {"linear filters": score(x, latents, tr, te, cfg.ridge, **by),
           "linear filters, null": score(x, circular_shift(latents, np.random.default_rng(seed)), tr, te, cfg.ridge)}
    if n_features > 0:
        feats = np.concatenate([x, random_relu(x, tr, n_features, seed)], axis=1)
        out["random features"] = score(feats, latents, tr, te, cfg.ridge, **by)
    if gru_hidden > 0:
        h = trained_gru(counts, latents, tr, cfg, gru_hidden, gru_steps, seed)
        out[f"trained GRU ({gru_hidden} units)"] = score(h.astype(np.float64), latents, tr, te, cfg.ridge, **by)
        rng = np.random.default_rng(seed)
        rates = recode_rates(h.astype(np.float64), tr, poisson_gain)
        cv = renewal_cv(rates[te], order, bin_size, rng) if poisson else None
        kind = "Poisson" if order == 1 else f"gamma-{order}"
        for n in poisson:
            copies = max(n // gru_hidden, 1)
            f = filtered_counts(renewal_counts(rates, copies, order, bin_size, rng), bin_size, cfg.readout_taus)
            out[f"GRU as {copies * gru_hidden} {kind} neurons"] = {**score(f, latents, tr, te, cfg.ridge, **by),
                                                                   "cv_isi": cv}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prepared")
    ap.add_argument("teacher", help="a teacher directory (its latents.npz)")
    ap.add_argument("--student", nargs="*", default=[], help="student directories (their readout.npz)")
    ap.add_argument("--features", type=int, default=3000, help="random ReLU features (0 = linear filters only)")
    ap.add_argument("--gru", type=int, default=0, metavar="HIDDEN",
                    help="also train a GRU of HIDDEN units with the student's CCA loss (0 = off)")
    ap.add_argument("--gru-steps", type=int, default=1000, help="training steps of the GRU")
    ap.add_argument("--poisson", type=int, nargs="*", default=[], metavar="N",
                    help="with --gru: also score its code emitted by N Poisson neurons (multiples of HIDDEN)")
    ap.add_argument("--poisson-gain", type=float, default=1.0,
                    help="depth g of the log-normal rate modulation of the Poisson neurons (rate 10 exp(g z) Hz)")
    ap.add_argument("--order", type=int, default=1,
                    help="the neurons of --poisson as gamma renewal processes of this order (1 = Poisson; 4: CV 0.5 "
                         "at a constant rate, more regular firing)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bands", type=float, nargs="*", default=[], metavar="HZ",
                    help="also score each model within frequency bands cut at these edges (Hz, ascending)")
    args = ap.parse_args(argv)
    if args.poisson and args.gru <= 0:
        ap.error("--poisson recodes the trained GRU: give --gru HIDDEN too")
    if args.order < 1:
        ap.error(f"--order must be >= 1 (1 = Poisson), got {args.order}")
    for d in [args.teacher, *args.student]:  # before minutes of features
        need = "latents.npz" if d == args.teacher else "readout.npz"
        if not (Path(d) / need).is_file():
            ap.error(f"{d}: no {need}")
    cfg = StudentConfig()
    ps = PreparedSession.load(args.prepared)
    if args.bands:
        try:
            check_band_edges(args.bands, ps.bin_size)
        except ValueError as e:
            ap.error(f"--bands: {e}")
    latents = np.load(Path(args.teacher) / "latents.npz")["latents"].astype(np.float64)
    counts = np.asarray(ps.load_counts()[:], np.float64)
    scores = reference_scores(counts, latents, ps.split, ps.bin_size, cfg, args.features, args.seed,
                              args.gru, args.gru_steps, tuple(args.poisson), args.poisson_gain,
                              args.order, args.bands)
    tr, te = blocks(ps.split, cfg.burn_in)
    for d in args.student:
        z = np.load(Path(d) / "readout.npz")["readout"].astype(np.float64)
        scores[f"student {d}"] = score(z, latents, tr, te, cfg.ridge, args.bands, ps.bin_size)
    print(f"held-out CCA against {args.teacher} ({latents.shape[1]} dims; {int(te.sum())} test bins)")
    width = max(len(k) for k in scores)
    for name, s in scores.items():
        pairs = s.get("pairs")
        tail = f"  pairs 1-9 {np.mean(pairs[:9]):.3f}, 17+ {np.mean(pairs[16:]):.3f}" if pairs and len(pairs) > 16 else ""
        cv = f"  CV of ISI {s['cv_isi']:.2f}" if s.get("cv_isi") is not None else ""
        print(f"{name.ljust(width)}  {s['mean']:.3f}  ({s['features']} features){tail}{cv}")
    if args.bands:
        print("by time scale (both sides band-passed, zero-phase):")
        for name, s in scores.items():
            if "bands" in s:
                print(f"{name.ljust(width)}  " + "  ".join(f"{k} {v:.3f}" for k, v in s["bands"].items()))


if __name__ == "__main__":
    main()
