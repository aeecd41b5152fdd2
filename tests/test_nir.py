"""NIR export round trip: written with snntorch's exporter, read back with the nir package."""

import nir
import numpy as np
import pytest
import torch

from neurojepa.config import save_config
from neurojepa.student.config import StudentConfig
from neurojepa.student.network import StudentNet
from neurojepa.student.nir_export import export_nir
from neurojepa.student.train import save_student


def test_nir_round_trip_types_shapes_and_signs(tmp_path):
    cfg = StudentConfig(n_exc=12, n_inh=3, seed=3, readout_taus=[0.05])
    net = StudentNet(7, 4, cfg)
    save_config(cfg, tmp_path / "config.yaml")
    save_student(net, tmp_path / "student.pt")
    g = nir.read(str(export_nir(tmp_path, tmp_path / "s.nir")))

    kinds = {k: type(v).__name__ for k, v in g.nodes.items()}
    assert sorted(kinds.values()) == sorted(["Input", "Affine", "LIF", "Affine", "LI", "Affine", "Output"])
    lif = next(k for k, v in g.nodes.items() if isinstance(v, nir.LIF))
    rec = next(b for a, b in g.edges if a == lif and (b, lif) in g.edges)  # the recurrent loop
    inp = next(a for a, b in g.edges if b == lif and a != rec)
    filt = next(b for a, b in g.edges if a == lif and b != rec)
    out = next(b for a, b in g.edges if a == filt)
    assert isinstance(g.nodes[filt], nir.LI)

    w_in, w_rec, w_out = (np.asarray(g.nodes[k].weight) for k in (inp, rec, out))
    assert w_in.shape == (15, 7) and w_rec.shape == (15, 15) and w_out.shape == (4, 15)
    np.testing.assert_allclose(w_rec, net.rec.weight.detach().numpy(), rtol=1e-6)
    assert (w_in >= 0).all()
    assert (w_rec[:, :12] >= 0).all() and (w_rec[:, 12:] <= 0).all() and (w_rec[:, 12:] < 0).any()
    assert (w_out[:, :12] >= 0).all() and (w_out[:, 12:] == 0).all()  # readout from E neurons only
    tau = np.asarray(g.nodes[lif].tau)
    np.testing.assert_allclose(tau[:12], cfg.dt / (1 - np.exp(-cfg.dt / cfg.tau_mem_exc)), rtol=1e-5)  # ~20 ms
    np.testing.assert_allclose(tau[12:], cfg.dt / (1 - np.exp(-cfg.dt / cfg.tau_mem_inh)), rtol=1e-5)  # ~10 ms
    assert torch.equal(torch.as_tensor(np.asarray(g.nodes[lif].v_threshold), dtype=torch.float32).flatten()[:1],
                       torch.tensor([cfg.threshold]))


def test_nir_readout_branch_per_time_constant(tmp_path):
    cfg = StudentConfig(n_exc=12, n_inh=3, seed=3, readout_taus=[0.01, 0.03, 0.1])
    net = StudentNet(7, 4, cfg)
    save_config(cfg, tmp_path / "config.yaml")
    save_student(net, tmp_path / "student.pt")
    g = nir.read(str(export_nir(tmp_path, tmp_path / "s.nir")))
    lif = next(k for k, v in g.nodes.items() if isinstance(v, nir.LIF))
    out = next(k for k, v in g.nodes.items() if isinstance(v, nir.Output))
    filters = [b for a, b in g.edges if a == lif and isinstance(g.nodes[b], nir.LI)]
    assert sorted(float(np.asarray(g.nodes[f].tau)[0]) for f in filters) == pytest.approx([0.01, 0.03, 0.1])
    w_ro = net.readout.weight.detach().numpy()
    blocks = []
    for f in filters:
        (lin,) = [b for a, b in g.edges if a == f]
        assert (lin, out) in g.edges  # every branch feeds the output (NIR sums inputs)
        k = cfg.readout_taus.index(pytest.approx(float(np.asarray(g.nodes[f].tau)[0])))
        w = np.asarray(g.nodes[lin].weight)
        assert w.shape == (4, 15) and (w[:, 12:] == 0).all() and (w >= 0).all()
        np.testing.assert_allclose(w[:, :12], w_ro[:, 12 * k:12 * (k + 1)], rtol=1e-6)
        blocks.append(k)
    assert sorted(blocks) == [0, 1, 2]
