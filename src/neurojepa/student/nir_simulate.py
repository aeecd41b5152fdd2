"""A second simulator for NIR graphs: nirtorch wires and steps the graph, this module supplies NIR's node equations.

It exists to check an exported student (nir_export.py) independently of :class:`~neurojepa.student.network.StudentNet`:
the equations below are written from NIR's node definitions, not from the student's code. Stepping at ``dt`` s with
forward Euler, spikes of height 1 per step (NIR's ``z = 1``)::

    Affine   y_t = W x_t + b
    LI       v_t = (1 - dt/tau) v_{t-1} + (r dt/tau) I_t + (dt/tau) v_leak           output v_t
    LIF      the same update, then z_t = [v_t > v_threshold]                          output z_t
             reset="nir":      v_t <- v_reset where z_t = 1 (NIR's definition of LIF)
             reset="subtract": v_threshold * z_{t-1} is subtracted in the update instead (the student's reset,
                               snntorch's reset_mechanism="subtract")

I_t is the sum of a node's inputs (NIR sums them). An edge that closes a cycle (``LIF -> W_rec -> LIF``) carries
the value of the previous step (nirtorch's state), i.e. one dt of synaptic delay, as in the student.

Why not ``snntorch.import_from_nir`` (snntorch 1.0): it has no mapping for ``nir.LI`` (the readout filters), and
it converts LIF with a fixed dt of 1e-4 s (beta = 1 - 1e-4 / tau = 0.9951 for the student's 20 ms neurons instead
of 0.9512; threshold rescaled to 10) and a reset to zero, so it would step a different network. nirtorch's default
``Affine`` mapping (2.6) leaves the bias at its random initial value, so Affine is mapped here too.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

RESETS = ("nir", "subtract")


def _f32(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=torch.float32)


class _Leaky(nn.Module):
    """Forward-Euler leaky integration of a NIR LI or LIF node; the LIF part fires and resets."""

    def __init__(self, node, dt: float, reset: str | None):
        super().__init__()
        tau = np.asarray(node.tau, dtype=np.float64)
        # computed in float64, then rounded once: the student's beta comes back exactly from tau = dt / (1 - beta)
        self.register_buffer("decay", _f32(1.0 - dt / tau))
        self.register_buffer("gain", _f32(np.asarray(node.r) * dt / tau))
        self.register_buffer("leak", _f32(dt / tau * np.asarray(node.v_leak)))
        self.spiking = reset is not None
        if self.spiking:
            self.reset = reset
            self.register_buffer("v_threshold", _f32(node.v_threshold))
            self.register_buffer("v_reset", _f32(node.v_reset))

    def forward(self, x: torch.Tensor, state=None):
        v, z = (torch.zeros_like(x), torch.zeros_like(x)) if state is None else state
        v = self.decay * v + self.gain * x + self.leak
        if not self.spiking:
            return v, (v, z)
        if self.reset == "subtract":
            v = v - self.v_threshold * z
        z = (v > self.v_threshold).to(x.dtype)
        if self.reset == "nir":
            v = torch.where(z > 0, self.v_reset, v)
        return z, (v, z)


def _affine(node) -> nn.Linear:
    w = np.asarray(node.weight)
    m = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        m.weight.copy_(_f32(w))
        m.bias.copy_(_f32(node.bias))
    return m


def held_input(counts, substeps: int) -> torch.Tensor:
    """counts (B, bins, n_in) -> (bins * substeps, B, n_in) float32: each bin's counts held for its substeps, the
    input a student graph expects per dt step."""
    c = torch.as_tensor(np.asarray(counts), dtype=torch.float32)
    return c.transpose(0, 1).repeat_interleave(int(substeps), dim=0)


@torch.no_grad()
def simulate_nir(graph, inputs, dt: float | None = None, reset: str | None = None) -> dict:
    """Step a NIR graph (a ``nir.NIRGraph`` or a .nir file) over ``inputs`` (T, B, n_in) per dt step.

    dt: step in s (default ``graph.metadata["dt"]``, which nir_export writes). reset: ``"nir"`` (NIR's LIF: reset
    to v_reset) or ``"subtract"`` (the student's); default: each LIF node's ``metadata["reset"]``, else ``"nir"``.
    Returns ``{"spikes": {lif_node_name: (T, B, N) float32 of 0/1}, "output": (T, B, n_out) float32}``.
    """
    import nir
    import nirtorch

    if not isinstance(graph, nir.NIRGraph):
        graph = nir.read(str(graph))
    if dt is None and "dt" not in graph.metadata:
        raise ValueError("the graph's metadata has no dt (not written by neurojepa's nir_export): pass dt")
    dt = float(graph.metadata["dt"]) if dt is None else float(dt)
    if reset is not None and reset not in RESETS:
        raise ValueError(f"unknown reset {reset!r} (choose from {', '.join(RESETS)})")

    def lif(node):
        r = reset or node.metadata.get("reset", "nir")
        return _Leaky(node, dt, r.decode() if isinstance(r, bytes) else str(r))

    module = nirtorch.nir_to_torch(graph, {nir.LIF: lif, nir.LI: lambda node: _Leaky(node, dt, None),
                                           nir.Affine: _affine})
    lifs = {k: k.replace(".", "_") for k, v in graph.nodes.items() if isinstance(v, nir.LIF)}
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    spikes: dict[str, list] = {k: [] for k in lifs}
    outputs = []
    state = None
    for xt in x.unbind(0):
        *outs, state = module(xt, state)  # the Output node returns each of its inputs: NIR sums them
        outputs.append(sum(outs[1:], outs[0]))
        for name, key in lifs.items():
            spikes[name].append(state[key][1])
    return {"spikes": {k: torch.stack(v) for k, v in spikes.items()}, "output": torch.stack(outputs)}
