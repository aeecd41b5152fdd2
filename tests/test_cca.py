"""CCA: known answers against independent references, invariances, and the held-out vs in-sample gap."""

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group
from sklearn.cross_decomposition import CCA

from neurojepa.metrics.cca import canonical_correlations, cca_loss, heldout_cca, null_heldout_cca

RIDGE = 1e-4  # the ridge has no default (the student's config sets it); these tests keep the value they were written with


def _related(n=2000, p=6, q=4, k=3, seed=0):
    """x, y sharing k latent signals of decreasing strength, plus independent noise."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, k))
    x = s @ rng.normal(size=(k, p)) + rng.normal(size=(n, p)) * np.linspace(0.3, 1.0, p)
    y = s * np.array([2.0, 1.0, 0.5])[:k] @ rng.normal(size=(k, q)) + rng.normal(size=(n, q))
    return x, y


def test_matches_qr_svd_reference():
    x, y = _related()
    qx, _ = np.linalg.qr(x - x.mean(0))
    qy, _ = np.linalg.qr(y - y.mean(0))
    ref = np.linalg.svd(qx.T @ qy, compute_uv=False)
    np.testing.assert_allclose(canonical_correlations(x, y, ridge=0.0), ref, atol=1e-10)


def test_matches_sklearn_leading_components():
    x, y = _related()
    u, v = CCA(n_components=3, max_iter=5000, tol=1e-10).fit(x, y).transform(x, y)
    sk = [abs(np.corrcoef(u[:, i], v[:, i])[0, 1]) for i in range(3)]
    np.testing.assert_allclose(canonical_correlations(x, y, ridge=0.0)[:3], sk, atol=2e-3)


def test_invariant_to_rotation_and_invertible_maps():
    x, y = _related()
    rng = np.random.default_rng(1)
    rot = ortho_group.rvs(x.shape[1], random_state=2)
    mix = rng.normal(size=(y.shape[1], y.shape[1])) + 3 * np.eye(y.shape[1])  # invertible, non-orthogonal
    base = canonical_correlations(x, y, ridge=0.0)
    np.testing.assert_allclose(canonical_correlations(x @ rot, y @ mix + 5.0, ridge=0.0), base, atol=1e-9)
    np.testing.assert_allclose(heldout_cca(x[:1000] @ rot, y[:1000] @ mix, x[1000:] @ rot, y[1000:] @ mix, RIDGE),
                               heldout_cca(x[:1000], y[:1000], x[1000:], y[1000:], RIDGE), atol=1e-3)


def test_independent_noise_heldout_near_zero_in_sample_not():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(1000, 200)), rng.normal(size=(1000, 16))
    assert canonical_correlations(x[:500], y[:500], RIDGE).mean() > 0.5  # inflated in-sample
    assert abs(heldout_cca(x[:500], y[:500], x[500:], y[500:], RIDGE).mean()) < 0.05


def test_heldout_recovers_true_correlation_and_null_is_zero():
    x, y = _related(n=6000)
    held = heldout_cca(x[:3000], y[:3000], x[3000:], y[3000:], RIDGE)
    np.testing.assert_allclose(held, canonical_correlations(x[3000:], y[3000:], RIDGE), atol=0.05)
    assert held[0] > 0.7 and held[-1] < held[0]
    assert abs(null_heldout_cca(x[:3000], y[:3000], x[3000:], y[3000:], RIDGE, seed=0).mean()) < 0.05


def test_torch_loss_equals_minus_sum_and_gradient_is_right():
    x, y = _related(n=300)
    xt = torch.tensor(x, requires_grad=True)
    loss = cca_loss(xt, torch.tensor(y), ridge=1e-4)
    assert loss.item() == pytest.approx(-canonical_correlations(x, y, ridge=1e-4).sum(), abs=1e-9)
    small = torch.tensor(x[:40, :3], requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: cca_loss(a, torch.tensor(y[:40, :2]), 1e-3), (small,))
