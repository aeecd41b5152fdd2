"""The optional CEBRA-Time peer (`teacher/baselines.py: cebra_latents`, the `bench` extra): skipped without cebra.

`make test` does not install the `bench` extra, so this runs where someone benchmarks against CEBRA (`make bench`,
`benchmarks/cross_state.py --cebra`): it checks that the installed CEBRA still takes our call and that its embedding
carries the simulated latent on held-out bins, against time-shifted latents as the null.
"""

import numpy as np
import pytest

from neurojepa.metrics.latent import ridge_r2
from neurojepa.teacher.baselines import cebra_latents

pytest.importorskip("cebra")


def smooth_noise(rng, n: int, dims: int, tau_bins: float = 30.0) -> np.ndarray:
    """(n, dims) AR(1) processes with unit variance and a time constant of tau_bins: not periodic."""
    a = np.exp(-1.0 / tau_bins)
    e = rng.normal(0.0, np.sqrt(1 - a * a), (n, dims))
    x = np.empty((n, dims))
    x[0] = rng.normal(size=dims)
    for i in range(1, n):
        x[i] = a * x[i - 1] + e[i]
    return x


def test_cebra_embedding_reads_the_latent_on_held_out_bins():
    rng = np.random.default_rng(0)
    n, units = 6000, 40
    latent = smooth_noise(rng, n, 2)
    rates = np.exp(np.log(0.2) + latent @ rng.normal(0, 0.8, (2, units)))
    counts = rng.poisson(rates).astype(np.float32)
    train = np.arange(n) < 4000
    z = cebra_latents(counts, train, 0.01, 4, 50.0, seed=0, max_iterations=300)
    assert z.shape == (n, 4) and z.dtype == np.float32 and np.isfinite(z).all()
    r2 = ridge_r2(z, latent, train, ~train)
    null = ridge_r2(z, smooth_noise(rng, n, 2), train, ~train)  # a latent of the same kind that drove nothing
    assert r2 > 0.5 and r2 > null + 0.3, (r2, null)
