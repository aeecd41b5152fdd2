"""Export a trained student to NIR (Neuromorphic Intermediate Representation) through snntorch's own exporter.

The student is rebuilt as a plain snntorch chain -- ``Linear`` (input projection, all weights >= 0) ->
``RLeaky`` (the E/I population, its recurrent ``Linear`` = the Dale-signed W_rec, bias 0) -> ``Linear`` (readout;
columns of I neurons are zero, since the readout sees E neurons only) -- and handed to
``snntorch.export_to_nir``. Two fixes are applied to the graph it returns:

* snntorch assumes dt = 1e-4 s when it converts beta into NIR's continuous ``tau``; we recompute
  ``tau = dt / (1 - beta)`` and ``r = tau / dt`` with the student's real dt.
* the readout's low-pass filters of E spikes become ``nir.LI`` nodes (one per ``readout_taus`` entry, tau = that
  time constant, r = bin_size / dt, so that with spikes of height 1 per dt step (NIR's ``z = 1``) each holds spikes
  per bin in the steady state, like the bin-level filter used in training) between the LIF population and the
  readout: ``LIF -> readout_filter -> Affine -> Output`` for the first time constant and
  ``LIF -> readout_filter_k -> readout_k (Affine) -> Output`` for the others (NIR sums a node's inputs).

The graph is meant to be stepped at the student's dt (``graph.metadata["dt"]``) with each bin's spike counts held
for ``bin_size / dt`` steps; the LIF node's metadata names the student's reset (``"subtract"``). What the graph
cannot carry, and how much it matters, is measured by :func:`~neurojepa.student.nir_simulate.simulate_nir` (a second
simulator on nirtorch) in tests/test_nir.py and docs/student.md:

* NIR's LIF resets to ``v_reset`` (0); the student subtracts the threshold. Stepped with the subtractive reset the
  graph gives bit-identical spikes to :meth:`StudentNet.simulate`; with NIR's reset 84 % of the spikes are identical.
* not representable at all: the refractory input gate, spike-frequency adaptation, the private noise current, the
  divisive input normalisation (``input_norm_tau``) and the slow afferent synapses (``slow_syn_fraction``) (a
  student with ``refractory=0 adapt_strength=0 noise_std=0 input_norm_tau=0`` is represented exactly). They
  matter: with the default student's values (before the normalisation), 0.8 % of the spikes are identical (without
  noise the calibrated bias leaves neurons silent; without adaptation they fire ~3.7x more). :func:`student_to_nir`
  logs a warning for such a student.
* feed-forward inhibition (``ff_inhibition``) is linear in the counts and is folded into the input Affine, exactly
  (its weights are then the effective, signed afferent map ``StudentNet.afferent_weight()``).
* the readout's filters run per dt step in NIR but once per bin in the student (readout correlation > 0.99;
  0.9992 on the test network).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import atomic_path
from .network import StudentNet

log = logging.getLogger(__name__)


def to_snntorch(net: StudentNet) -> nn.Sequential:
    """The student as a plain snntorch ``Sequential`` (effective weights copied, no parametrisations)."""
    import snntorch as snn

    n = net.n_exc + net.n_inh
    inp = nn.Linear(net.n_in, n)
    lif = snn.RLeaky(beta=net.beta.clone(), linear_features=n, all_to_all=True, threshold=net.cfg.threshold,
                     reset_mechanism="subtract", init_hidden=True)
    out = nn.Linear(n, net.n_out)
    with torch.no_grad():
        inp.weight.copy_(net.afferent_weight())  # feed-forward inhibition folded in (a linear map of the counts)
        inp.bias.copy_(net.inp.bias)
        lif.recurrent.weight.copy_(net.rec.weight)
        lif.recurrent.bias.zero_()
        out.weight.zero_()
        out.weight[:, : net.n_exc] = net.readout.weight[:, : net.n_exc]  # first filter's block (see student_to_nir)
        out.bias.copy_(net.readout.bias)
    return nn.Sequential(inp, lif, out)


def student_to_nir(net: StudentNet):
    """A ``nir.NIRGraph`` of the student: input -> Affine -> LIF <-> Affine (recurrent) -> LI -> Affine -> output
    (one LI -> Affine branch per readout time constant)."""
    import nir
    from snntorch.export_nir import export_to_nir

    lost = [f"{name} {value:g}" for name, value in (("refractory", net.cfg.refractory), ("adapt_strength",
            net.cfg.adapt_strength), ("noise_std", net.cfg.noise_std), ("input_norm_tau", net.cfg.input_norm_tau),
            ("slow_syn_fraction", net.cfg.slow_syn_fraction))
            if value > 0]
    if lost:
        log.warning("NIR cannot represent this student's %s: a NIR simulator will not reproduce its spikes "
                    "(train with these at 0 for a faithful export; docs/student.md)", ", ".join(lost))
    seq = to_snntorch(net)
    graph = export_to_nir(seq, torch.zeros(1, net.n_in), ignore_dims=[0])
    dt = net.cfg.dt
    beta = net.beta.numpy().astype(np.float64)
    lif_name = next(k for k, v in graph.nodes.items() if isinstance(v, nir.LIF))
    lif = graph.nodes[lif_name]
    lif.tau = dt / (1.0 - beta)
    lif.r = lif.tau / dt
    # what NIR's LIF does not say; readers ignore metadata, nir_simulate.simulate_nir reads "reset"
    lif.metadata = {"reset": "subtract", "refractory_s": float(net.n_ref * dt),
                    "adapt_strength": float(net.cfg.adapt_strength), "noise_std": float(net.cfg.noise_std)}
    readout_name = next(b for a, b in graph.edges if a == lif_name and b != f"{lif_name.rsplit('.', 1)[0]}.w_rec")
    output_name = next(b for a, b in graph.edges if a == readout_name)
    n, ne = len(beta), net.n_exc
    w_ro = net.readout.weight.detach().numpy()
    graph.edges = [e for e in graph.edges if e != (lif_name, readout_name)]
    for k, tau in enumerate(net.cfg.readout_taus):
        filt, lin = ("readout_filter", readout_name) if k == 0 else (f"readout_filter_{k}", f"readout_{k}")
        graph.nodes[filt] = nir.LI(tau=np.full(n, float(tau)), r=np.full(n, net.bin_size / dt), v_leak=np.zeros(n))
        if k > 0:
            w = np.zeros((net.n_out, n), np.float32)
            w[:, :ne] = w_ro[:, k * ne:(k + 1) * ne]
            graph.nodes[lin] = nir.Affine(weight=w, bias=np.zeros(net.n_out, np.float32))
            graph.edges.append((lin, output_name))
        graph.edges += [(lif_name, filt), (filt, lin)]
    graph.infer_types()
    graph.metadata = {"dt": float(dt), "bin_size": float(net.bin_size), "substeps": int(net.substeps),
                      "input": "spike counts of the current bin, held for `substeps` steps of dt seconds"}
    return graph


def export_nir(student_dir: str | Path, out_file: str | Path) -> Path:
    """Write STUDENT_DIR's trained student as a NIR (HDF5) file, atomically. Returns the path."""
    import nir

    from .train import load_student

    graph = student_to_nir(load_student(student_dir))
    out_file = Path(out_file)
    with atomic_path(out_file) as tmp:
        nir.write(str(tmp), graph)
    return out_file
