"""DDP equivalence of SIGReg: 2 CPU processes (gloo) holding half a global batch each give the single-process
loss and gradients on the whole batch, and the two wrong reductions (a plain ``dist.all_reduce``, or none) do not.

The model is a fixed linear layer wrapped in ``DistributedDataParallel``; the loss is a prediction-like MSE (mean
over the local batch) plus lambda * ``sigreg_sequence`` (the training module's regulariser) on the local half.
Everything runs in float64 so that "equal" can mean allclose at 1e-10, not a loose tolerance.
"""

from __future__ import annotations

import os
import queue
import socket
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

WORLD = 2
B, T, D, E = 8, 5, 4, 6  # global windows, time steps, input dim, latent dim
LAM, STEP, SLICES = 0.3, 7, 16
SIGREG = dict(num_slices=SLICES, seed=0, time_weight=0.25, spectral_slices=0, spectral_weight=1.0)  # explicit options
MODES = ("autograd", "plain", "none")  # the reduction sigreg uses: correct, non-autograd all_reduce, no reduction


def _problem():
    """The fixed global batch z (B, T, D), target (B, T-1, E) and a fresh linear layer D -> E with fixed weights."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    target = torch.randn(B, T - 1, E, generator=g, dtype=torch.float64)
    lin = torch.nn.Linear(D, E, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(E, D, generator=g, dtype=torch.float64) / D ** 0.5)
        lin.bias.copy_(0.1 * torch.randn(E, generator=g, dtype=torch.float64))
    return z, target, lin


def _loss_and_grads(model, z, target, distributed, lam=LAM):
    """loss = MSE(next-step prediction) + lam * SIGReg on the local batch; returns loss and gradients as numpy."""
    from neurojepa.teacher.sigreg import sigreg_sequence

    z = z.clone().requires_grad_(True)
    h = model(z)  # (b, T, E)
    mse = (h[:, :-1] - target).square().mean()
    loss = mse + lam * sigreg_sequence(h, STEP, **SIGREG, distributed=distributed)
    model.zero_grad()
    loss.backward()
    params = model.module if hasattr(model, "module") else model
    return dict(loss=loss.item(), weight=params.weight.grad.numpy().copy(), bias=params.bias.grad.numpy().copy(),
                z=z.grad.numpy().copy())


def _plain_all_reduce_mean(x, world):
    """The naive reduction: right value, but the in-place ``dist.all_reduce`` is invisible to autograd, so the
    backward sees ``clone(x) / world``: each rank's gradient misses the other ranks' share (1/W too small)."""
    import torch.distributed as dist

    y = x.clone()
    dist.all_reduce(y)
    return y / world


def _worker(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    from neurojepa.teacher import sigreg as sigreg_module

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=30))
    try:
        z, target, lin = _problem()
        model = torch.nn.parallel.DistributedDataParallel(lin)
        half = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        out = {}
        correct = sigreg_module._all_reduce_mean
        for mode in MODES:
            sigreg_module._all_reduce_mean = _plain_all_reduce_mean if mode == "plain" else correct
            out[mode] = _loss_and_grads(model, z[half], target[half], distributed=mode != "none")
        sigreg_module._all_reduce_mean = correct
        results.put((rank, out))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker) -> dict:
    """Run ``worker(rank, port, queue)`` in WORLD spawned processes; {rank: what it put on the queue}."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=worker, args=(rank, port, results), daemon=True) for rank in range(WORLD)]
    for p in procs:
        p.start()
    try:
        got = dict(results.get(timeout=60) for _ in procs)
    except queue.Empty:
        pytest.fail(f"DDP workers gave no result in 60 s (exit codes {[p.exitcode for p in procs]})")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join()
    assert all(p.exitcode == 0 for p in procs)
    return got


@pytest.fixture(scope="module")
def ddp_results():
    """Per mode: rank-averaged loss, DDP parameter gradients (identical on both ranks) and the global z gradient."""
    got = _spawn(_worker)
    merged = {}
    for mode in MODES:
        ranks = [got[r][mode] for r in range(WORLD)]
        for key in ("weight", "bias"):  # DDP all-reduces parameter gradients: every rank holds the average
            np.testing.assert_array_equal(ranks[0][key], ranks[1][key])
        # each rank's loss is a mean over its half, so the global z gradient is 1/W of the local one
        merged[mode] = dict(loss=np.mean([r["loss"] for r in ranks]), weight=ranks[0]["weight"],
                            bias=ranks[0]["bias"], z=np.concatenate([r["z"] for r in ranks]) / WORLD)
    return merged


def _single(lam):
    """The reference: one process, the whole global batch, not distributed."""
    z, target, lin = _problem()
    return _loss_and_grads(lin, z, target, distributed=None, lam=lam)


@pytest.fixture(scope="module")
def single():
    return _single(LAM)


def _close(a, b) -> bool:
    return all(np.allclose(a[k], b[k], rtol=1e-10, atol=1e-12) for k in ("loss", "weight", "bias", "z"))


@pytest.mark.slow
def test_ddp_sigreg_equals_single_process(ddp_results, single):
    got = ddp_results["autograd"]
    assert got["loss"] == pytest.approx(single["loss"], rel=1e-12)
    for key in ("weight", "bias", "z"):
        np.testing.assert_allclose(got[key], single[key], rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_naive_reductions_differ(ddp_results, single):
    """Guards against a vacuous test: the SIGReg term is large enough that both wrong reductions are caught."""
    plain, none = ddp_results["plain"], ddp_results["none"]
    assert plain["loss"] == pytest.approx(single["loss"], rel=1e-12)  # a plain all_reduce gets the value right...
    assert not _close(plain, single)  # ...but not the gradients
    assert np.abs(plain["weight"] - single["weight"]).max() > 1e-3 * np.abs(single["weight"]).max()
    assert not _close(none, single)  # local ecf and local N: a different statistic and gradient
    assert abs(none["loss"] - single["loss"]) > 1e-3 * abs(single["loss"])


@pytest.mark.slow
def test_plain_all_reduce_shrinks_the_across_batch_gradient_by_world_size(ddp_results, single):
    """RESEARCH.md's warning, measured: with a plain all_reduce the across-batch SIGReg share of the gradient is 1/W.

    Split the single-process gradient into MSE + across-time SIGReg (both local, reduced correctly by DDP alone)
    and the across-batch SIGReg share; the plain version must equal the former plus 1/W of the latter.
    """
    from neurojepa.teacher import sigreg as sigreg_module

    local = _single(0.0)  # MSE only
    z, target, lin = _problem()
    h = lin(z)
    time_only = sigreg_module.sigreg_sequence(h, STEP, **SIGREG) - sigreg_module.sigreg_sequence(
        h, STEP, **{**SIGREG, "time_weight": 0.0})  # the across-time term alone
    lin.zero_grad()
    (LAM * time_only).backward()
    local_weight = local["weight"] + lin.weight.grad.numpy()
    across_batch = single["weight"] - local_weight
    assert np.abs(across_batch).max() > 1e-2  # the term under test is not negligible
    np.testing.assert_allclose(ddp_results["plain"]["weight"], local_weight + across_batch / WORLD,
                               rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ the real teacher loss (all terms) under DDP
TB, TU = 8, 12  # global windows, units


def _teacher_problem():
    """A small float64 TeacherModule (default loss: prediction + SIGReg + count anchor, masked views with gain
    jitter) and a fixed global batch of counts whose halves have different spike totals (so the count anchor's
    normaliser matters)."""
    from neurojepa.teacher.config import TeacherConfig
    from neurojepa.teacher.module import TeacherModule

    cfg = TeacherConfig()
    cfg.model.width, cfg.model.embed_dim, cfg.model.dilations, cfg.model.horizon = 16, 8, [1, 2], 3
    cfg.model.predictor_hidden, cfg.train.window = 16, 8
    torch.manual_seed(0)
    mod = TeacherModule(cfg, n_units=TU).double()
    g = torch.Generator().manual_seed(1)
    length = mod.warm + cfg.train.window + cfg.model.horizon
    rate = torch.cat([torch.full((TB // 2, 1, 1), 0.3), torch.full((TB // 2, 1, 1), 1.5)])
    counts = torch.poisson(rate.expand(TB, length, TU).contiguous(), generator=g).double()
    return mod, counts


def _teacher_loss_and_grads(mod, counts, views, step=STEP):
    out = mod.losses(counts, views, step)
    mod.zero_grad()
    out["loss"].backward()
    return out["loss"].item(), {n: p.grad.clone() for n, p in mod.named_parameters() if p.grad is not None}


def _slice_views(views, part):
    scales, masks = views  # two views' scales (+ the whole population's with the forward count anchor), two masks
    return tuple(s[part] for s in scales), tuple(m[part] for m in masks)


def _teacher_worker(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    from neurojepa.teacher import module as module_mod

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=30))
    try:
        out = {}
        correct = module_mod.spike_total
        for mode in ("global", "local"):  # local: the naive per-rank normaliser, to show the test can fail
            module_mod.spike_total = correct if mode == "global" else (lambda y: y.sum())
            mod, counts = _teacher_problem()
            views = mod._views(counts, STEP)  # the global batch's views, as one process would draw them
            part = slice(rank * TB // WORLD, (rank + 1) * TB // WORLD)
            loss, grads = _teacher_loss_and_grads(mod, counts[part], _slice_views(views, part))
            for g in grads.values():  # what DDP does with the gradients: the mean over ranks
                dist.all_reduce(g)
                g /= WORLD
            out[mode] = (loss, {k: v.numpy() for k, v in grads.items()})
        module_mod.spike_total = correct
        results.put((rank, out))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def teacher_ddp():
    """{mode: (mean of the ranks' losses, rank 0's averaged gradients)} for the global and the local normaliser."""
    got = _spawn(_teacher_worker)
    return {m: (float(np.mean([got[r][m][0] for r in range(WORLD)])), got[0][m][1]) for m in ("global", "local")}


@pytest.mark.slow
def test_ddp_teacher_loss_and_gradients_equal_single_process(teacher_ddp):
    """The whole teacher loss (prediction + SIGReg + count anchor) on 2 gloo ranks holding half the windows each:
    the mean of the ranks' losses and the DDP-averaged gradients of every parameter equal one process on the
    global batch."""
    mod, counts = _teacher_problem()
    ref_loss, ref = _teacher_loss_and_grads(mod, counts, mod._views(counts, STEP))
    loss, grads = teacher_ddp["global"]
    assert loss == pytest.approx(ref_loss, rel=1e-10)
    assert set(grads) == set(ref) and len(ref) > 10  # every parameter of encoder, predictor, read-in, read-out
    for k in ref:
        np.testing.assert_allclose(grads[k], ref[k].numpy(), rtol=1e-8, atol=1e-12, err_msg=k)


@pytest.mark.slow
def test_ddp_teacher_with_a_per_rank_count_normaliser_differs(teacher_ddp):
    """Guards against a vacuous test: normalising the count anchor by each rank's own spike total changes the
    loss and the read-out gradients (the halves of the batch fire at different rates)."""
    mod, counts = _teacher_problem()
    ref_loss, ref = _teacher_loss_and_grads(mod, counts, mod._views(counts, STEP))
    loss, grads = teacher_ddp["local"]
    assert abs(loss - ref_loss) > 1e-4 * abs(ref_loss)
    w = "net.count_readout.session.weight"
    assert not np.allclose(grads[w], ref[w].numpy(), rtol=1e-6)
