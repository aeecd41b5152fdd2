"""SIGReg / Epps-Pulley against an independent numerical integral, and its behaviour on known distributions."""

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from neurojepa.teacher.sigreg import epps_pulley, random_directions, sigreg, sigreg_sequence, sigreg_statistic, vicreg

# sigreg_sequence's options have no defaults (they live in the teacher's loss config); these tests keep the values
# they were written with (the function's former defaults), overriding one where a test is about it
OPTIONS = dict(num_slices=64, seed=0, time_weight=0.25, spectral_slices=0, spectral_weight=1.0)


def seq(z, step, **kw):
    return sigreg_sequence(z, step, **{**OPTIONS, **kw})


def _ep_by_quad(x: np.ndarray, lo: float, hi: float) -> float:
    """N * integral_lo^hi |ecf(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt by adaptive quadrature (scipy), no symmetry trick."""
    def integrand(t):
        re = np.cos(t * x).mean() - np.exp(-t * t / 2)
        im = np.sin(t * x).mean()
        return (re * re + im * im) * np.exp(-t * t / 2)
    return len(x) * quad(integrand, lo, hi, limit=200)[0]


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.7, 1.0), (0.0, 2.5), (-1.0, 0.3)])
def test_epps_pulley_matches_quadrature(shift, scale):
    x = np.random.default_rng(1).standard_normal(200) * scale + shift
    fine = float(epps_pulley(torch.tensor(x, dtype=torch.float64), t_max=10.0, knots=2001))
    assert fine == pytest.approx(_ep_by_quad(x, -np.inf, np.inf), rel=1e-4, abs=1e-6)
    # the official 17-knot trapezoid on [0, 3] approximates the integral over [-3, 3] within a few percent
    coarse = float(epps_pulley(torch.tensor(x, dtype=torch.float64)))
    assert coarse == pytest.approx(_ep_by_quad(x, -3, 3), rel=0.05, abs=0.02)


def test_gaussian_small_collapsed_and_low_rank_large():
    g = torch.Generator().manual_seed(0)
    dirs = random_directions(16, 128, step=0)
    gauss = sigreg(torch.randn(1024, 16, generator=g), dirs)
    collapsed = sigreg(torch.zeros(1024, 16) + 0.1, dirs)
    low_rank = sigreg(torch.randn(1024, 2, generator=g) @ torch.randn(2, 16, generator=g) / 2 ** 0.5, dirs)
    shrunk = sigreg(0.2 * torch.randn(1024, 16, generator=g), dirs)
    assert gauss < 2.0  # O(1) under the null, whatever N
    for bad in (collapsed, low_rank, shrunk):
        assert bad > 20 * gauss


def test_statistic_scales_with_n_only_off_the_null():
    g = torch.Generator().manual_seed(3)
    dirs = random_directions(8, 64, step=0)
    off = [float(sigreg(0.5 * torch.randn(n, 8, generator=g), dirs)) for n in (256, 1024)]
    assert off[1] / off[0] == pytest.approx(4.0, rel=0.25)


def test_gradients_finite_even_at_collapse():
    for z in (torch.zeros(4, 10, 8), torch.randn(4, 10, 8), 1e4 * torch.randn(4, 10, 8)):
        z = z.clone().requires_grad_(True)
        (seq(z, step=5) + vicreg(z)).backward()
        assert torch.isfinite(z.grad).all()


def test_directions_are_unit_and_a_function_of_the_step():
    a, b, c = random_directions(8, 16, 3), random_directions(8, 16, 3), random_directions(8, 16, 4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a.norm(dim=0), torch.ones(16))


def test_sigreg_sequence_catches_temporal_collapse():
    """A latent Gaussian across windows but frozen in time passes the across-batch test and fails across time."""
    g = torch.Generator().manual_seed(0)
    frozen = torch.randn(64, 1, 8, generator=g).expand(64, 32, 8)
    moving = torch.randn(64, 32, 8, generator=g)
    assert seq(frozen, 0, time_weight=0.0) < 3 * seq(moving, 0, time_weight=0.0)
    assert seq(frozen, 0) > 5 * seq(moving, 0)


def test_vicreg_zero_for_whitened_large_for_collapsed():
    z = torch.randn(256, 4, 8, generator=torch.Generator().manual_seed(0)) * 1.5
    assert vicreg(z) < 0.2
    assert vicreg(torch.zeros(256, 4, 8)) == pytest.approx(25.0 * (1 - 1e-2), rel=1e-3)  # std = sqrt(eps)


def test_heldout_statistic_ranks_collapse():
    rng = np.random.default_rng(0)
    assert sigreg_statistic(rng.standard_normal((4000, 16))) < 2.0
    assert sigreg_statistic(rng.standard_normal((4000, 1)) @ np.ones((1, 16))) > 50.0


def test_sigreg_runs_in_float32_under_bf16_autocast():
    """Mixed precision must not touch the statistic: under a bf16 autocast region, and for a bf16 input, the value
    equals the float32 one on the same (rounded) points and the gradient reaches the bf16 input."""
    z = torch.randn(32, 6, 8, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16).requires_grad_(True)
    ref = seq(z.detach().float(), 5, num_slices=16, seed=1, time_weight=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = seq(z, 5, num_slices=16, seed=1, time_weight=0.0)
    assert got.dtype == torch.float32
    assert torch.allclose(got, ref, rtol=1e-6)
    got.backward()
    assert z.grad is not None and torch.isfinite(z.grad.float()).all()


def test_spectral_directions_are_the_principal_axes():
    """Against numpy's eigendecomposition of the sample covariance: the smallest-variance half first, then the
    largest (up to sign), and all D axes when asked for D or more."""
    from neurojepa.teacher.sigreg import spectral_directions

    scale = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
    z = torch.randn(16, 10, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * scale
    _, ref = np.linalg.eigh(np.cov(z.reshape(-1, 6).numpy().T))
    got = spectral_directions(z, 4).numpy()
    np.testing.assert_allclose(np.abs(got.T @ ref[:, [0, 1, 4, 5]]), np.eye(4), atol=1e-9)
    assert spectral_directions(z, 10).shape == (6, 6)


def test_spectral_slices_see_anisotropy_that_random_slices_average_away():
    """A Gaussian of unit mean variance but eigenvalues 1.8 and 0.2 (half each) in 32-D: random 1-D projections
    all have variance near 1 (concentration of measure), so random slices barely notice it; the principal axes
    see variances 1.8 and 0.2. An isotropic cloud stays near the null either way."""
    g = torch.Generator().manual_seed(0)
    d = 32
    std = torch.cat([torch.full((d // 2,), 1.8 ** 0.5), torch.full((d // 2,), 0.2 ** 0.5)])
    rot = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    aniso = (torch.randn(64, 8, d, generator=g) * std) @ rot.T
    iso = torch.randn(64, 8, d, generator=g)

    def extra(z):  # the spectral slices' share of the statistic
        return seq(z, 0, time_weight=0.0, spectral_slices=8) - seq(z, 0, time_weight=0.0)

    random_only = seq(aniso, 0, time_weight=0.0)
    assert extra(aniso) > 5 * random_only
    assert extra(iso) < 0.5 * extra(aniso)
