"""Bounded memory at full size (issue 19): metrics read features in row blocks and give the one-piece numbers;
the teacher's evaluation and the student's readout do not hold whole-session float copies.

The regression check measures traced (numpy) allocations of the teacher's whole evaluation, baselines included,
at two session lengths: the growth per bin must stay far below one float64 copy of the held-in counts per bin,
which the evaluation held several times over before, or of the held-out units' rates (docs/scale.md)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score

from neurojepa.data.arrays import ArraySession
from neurojepa.metrics import rows as R
from neurojepa.metrics.cobps import cobps, cobps_per_group
from neurojepa.metrics.decoding import flash_features
from neurojepa.metrics.latent import forecast_r2, forecast_r2_blocks, per_dim_std, rankme, ridge_r2
from neurojepa.metrics.rows import ColumnView
from neurojepa.teacher.baselines import SmoothedCounts, smooth_counts


def _counts(n: int, u: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) * 0.01
    gt = np.stack([np.sin(2 * np.pi * f * t + p) for f, p in zip((0.3, 0.7, 1.1, 0.05), (0, 1, 2, 3))], 1)
    load = rng.standard_normal((4, u)) * 0.6
    counts = np.empty((n, u), np.uint8)
    for a in range(0, n, 20_000):  # in pieces: the float64 rates of a long session would dwarf what is measured
        counts[a:a + 20_000] = rng.poisson(np.exp(gt[a:a + 20_000] @ load - 2.0))
    return counts, gt.astype(np.float32)


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(R, "BLOCK_BYTES", 2**16)  # 1,024-row blocks: every metric below reads many blocks


def test_smoothed_counts_rows_equal_the_whole_filter():
    counts, _ = _counts(30_000, 20)
    full = smooth_counts(counts[:, 2:15], 0.01, 50.0)
    src = SmoothedCounts(ColumnView(counts, np.arange(2, 15)), 0.01, 50.0, max_span=2_000)
    rng = np.random.default_rng(1)
    for rows in (np.sort(rng.choice(30_000, 3_000, replace=False)), rng.choice(30_000, 500), np.arange(30_000)):
        np.testing.assert_array_equal(src.take(rows), full[rows])
    np.testing.assert_array_equal(SmoothedCounts(counts, 0.01, 50.0, sqrt=True).take(np.arange(10, 90)),
                                  np.sqrt(smooth_counts(counts, 0.01, 50.0))[10:90])


def test_block_metrics_equal_one_piece_and_sklearn(small_blocks):
    counts, gt = _counts(20_000, 30)
    x = smooth_counts(counts, 0.01, 50.0)
    src = SmoothedCounts(counts, 0.01, 50.0)
    rng = np.random.default_rng(2)
    train, test = rng.random(20_000) < 0.6, np.zeros(20_000, bool)
    test[~train] = True
    # ridge_r2 against scikit-learn's RidgeCV on the same standardised rows
    x64, gt64 = x.astype(np.float64), gt.astype(np.float64)
    mu, sd = x64[train].mean(0), x64[train].std(0) + 1e-8
    ref = RidgeCV(alphas=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)).fit((x64[train] - mu) / sd, gt64[train])
    want = r2_score(gt64[test], ref.predict((x64[test] - mu) / sd), multioutput="raw_values")
    got = ridge_r2(src, gt, train, test, per_dim=True)[1]
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)
    assert rankme(src, rows=test) == pytest.approx(rankme(x[test]), rel=1e-9)
    np.testing.assert_allclose(per_dim_std(src, test), x[test].astype(np.float64).std(0), rtol=1e-9)
    held = counts[:, 25:]
    groups = np.where(np.arange(20_000) < 10_000, "a", "b")
    R.BLOCK_BYTES = 2**30  # one block: the reference
    one, one_g = cobps(x[:, :25], held, train, test), cobps_per_group(x[:, :25], held, train, test, groups)
    R.BLOCK_BYTES = 2**16
    src25 = SmoothedCounts(counts[:, :25], 0.01, 50.0)
    assert cobps(src25, held, train, test) == pytest.approx(one, rel=1e-9, abs=1e-12)
    assert cobps_per_group(src25, held, train, test, groups) == pytest.approx(one_g, rel=1e-9, abs=1e-12)
    onsets = np.sort(rng.choice(19_990, 800, replace=False))
    want = np.stack([x[o:o + 25].astype(np.float64).mean(0) for o in onsets])
    np.testing.assert_allclose(flash_features(src, onsets, 25), want, rtol=1e-6)
    p, t = rng.standard_normal((5_000, 3, 4)), rng.standard_normal((5_000, 3, 4))
    blocks = [(p[i:i + 700], t[i:i + 700]) for i in range(0, 5_000, 700)]
    assert forecast_r2_blocks(blocks) == pytest.approx(forecast_r2(p, t), rel=1e-9)


def _evaluation_peak(n_bins: int, n_units: int) -> float:
    """Traced peak bytes of the teacher's whole evaluation (teacher latents + raw / PCA / FA baselines)."""
    from neurojepa.teacher.config import TeacherConfig
    from neurojepa.teacher.evaluate import evaluate_teacher
    from neurojepa.teacher.module import TeacherModule

    counts, gt = _counts(n_bins, n_units, seed=3)
    states = np.where((np.arange(n_bins) // 6_000) % 2 == 0, "active", "passive")
    session = ArraySession(counts, 0.01, states=states, gt_latents=gt)
    cfg = TeacherConfig()
    heldout = np.arange(0, n_units, 4)  # 30 held-out units: co-smoothing's (bins x units) rates must be blocked too
    heldin = np.setdiff1d(np.arange(n_units), heldout)
    net = TeacherModule(cfg, n_units=len(heldin), n_states=2).net.eval()
    z = np.random.default_rng(4).standard_normal((n_bins, cfg.model.embed_dim)).astype(np.float32)
    tracemalloc.start()
    try:
        metrics = evaluate_teacher(net, z, session, counts, heldin, heldout, cfg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert {"smoothing", "pca", "fa"} <= set(metrics["baselines"]) and np.isfinite(metrics["baselines"]["smoothing"]["gt_r2"])
    return peak


def test_teacher_evaluation_memory_per_bin_is_bounded(monkeypatch):
    """What may grow with the session: arrays of a few values per bin (latents of the teacher and of PCA / FA, 32
    floats each; split and state labels; the held-out counts, 1 byte per unit), ~450 bytes per bin here. What may
    not: float copies of the held-in counts (90 units: >= 2 kB per bin for the old smoothed copies) or of the
    held-out units' rates (30 units: ~1.4 kB per bin for the old one-piece Poisson likelihood)."""
    from neurojepa.teacher import baselines

    monkeypatch.setattr(R, "BLOCK_BYTES", 4 * 2**20)
    monkeypatch.setattr(baselines, "SMOOTH_IN_MEMORY_BYTES", 0)  # a full-size session's: smoothed on demand
    n_units, short, long = 120, 60_000, 180_000
    per_bin = (_evaluation_peak(long, n_units) - _evaluation_peak(short, n_units)) / (long - short)
    assert per_bin < 800, f"the evaluation's peak grew by {per_bin:.0f} bytes per bin"


def test_student_readout_of_a_long_session_is_two_bounded_passes():
    """Past ``feature_memory_mb`` the readout refit draws from evenly spaced train bins only, and every bin's
    readout comes from a second simulation with the refitted readout, never from a whole-session feature array."""
    import torch

    from neurojepa.student.config import StudentConfig
    from neurojepa.student.evaluate import student_features, student_readout
    from neurojepa.student.network import StudentNet
    from neurojepa.synthetic.toy import synthetic_session
    from neurojepa.student.train import LONG_SESSION_BATCH, finish_readout

    counts, lat, split = synthetic_session(n_units=40, n_bins=12_000, d=4, seed=0)
    cfg = StudentConfig(n_exc=64, n_inh=16, readout_refit_steps=5, readout_refit_batch=512, feature_memory_mb=1)
    torch.manual_seed(0)
    net = StudentNet(counts.shape[1], lat.shape[1], cfg, bin_size=0.01).eval()  # synthetic_session's 10 ms bins
    width = len(cfg.readout_taus) * net.n_exc
    whole = len(counts) * width * 4
    assert whole > cfg.feature_memory_mb * 2**20  # this session takes the two-pass path
    tracemalloc.start()
    try:
        z = finish_readout(net, counts, lat, split == "train", cfg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert z.shape == (len(counts), lat.shape[1]) and np.isfinite(z).all()
    assert peak < 0.8 * whole, f"traced peak {peak / 2**20:.1f} MB vs whole-session features {whole / 2**20:.1f} MB"
    # the returned readout is the refitted network's own causal readout of every bin
    np.testing.assert_allclose(z, student_readout(net, counts, cfg.eval_chunk, cfg.eval_warmup, LONG_SESSION_BATCH),
                               rtol=1e-6, atol=1e-6)
    rows = np.array([5, 17, 4_000, 11_999])
    np.testing.assert_array_equal(student_features(net, counts, cfg.eval_chunk, cfg.eval_warmup, LONG_SESSION_BATCH, rows=rows),
                                  student_features(net, counts, cfg.eval_chunk, cfg.eval_warmup, LONG_SESSION_BATCH)[rows])


def test_smoothing_baseline_held_in_memory_equals_the_row_source(monkeypatch):
    """A short session's smoothed counts are filtered once and held; the features (and PCA / FA fit on them) equal
    those of the on-demand row source a full-size session gets."""
    from neurojepa.teacher import baselines

    counts = np.random.default_rng(5).poisson(0.4, (6_000, 12)).astype(np.uint8)
    train = np.arange(6_000) < 4_000
    held = baselines.baseline_latents(counts, train, 0.01, 4, 50.0, 0)
    assert isinstance(held["smoothing"], np.ndarray)
    stream = baselines.SmoothedCounts(counts, 0.01, 50.0)
    np.testing.assert_allclose(held["smoothing"], stream.take(np.arange(6_000)), rtol=1e-6, atol=1e-7)
    monkeypatch.setattr(baselines, "SMOOTH_IN_MEMORY_BYTES", 0)
    streamed = baselines.baseline_latents(counts, train, 0.01, 4, 50.0, 0)
    assert isinstance(streamed["smoothing"], baselines.SmoothedCounts)
    for name in ("pca", "fa"):
        np.testing.assert_allclose(held[name], streamed[name], rtol=1e-4, atol=1e-5)
