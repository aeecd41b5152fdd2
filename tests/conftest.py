"""Shared fixtures: the real NWB file that ships in tests/data/, a small in-memory VBN-like session, and the size
switch of the science checks.

Size switch: ``make test`` runs the science checks (marker ``science``) in a reduced but real form; ``make test-full``
sets ``NEUROJEPA_FULL=1`` and they run at full size. A test picks its size with :func:`sized` (``from conftest
import sized``) or asks the ``full`` fixture. Tests that take more than ~10 s carry the marker ``slow``
(``make test-fast`` leaves them out; ``make test`` runs them).
"""

import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neurojepa.data.session import BehaviorSeries, GroundTruth, InMemorySpikes, Session, SpikeTrains

# inside the repository, so that a clone in any folder passes its own tests (source and licence: tests/data/README.md)
REAL_NWB = Path(__file__).resolve().parent / "data" / "A8604-211122.nwb"

FULL_ENV = "NEUROJEPA_FULL"


def full_size() -> bool:
    """True when the science checks are to run at full size: ``NEUROJEPA_FULL`` set to anything but empty, 0, false,
    no or off (``make test-full`` sets it to 1)."""
    return os.environ.get(FULL_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def sized(reduced, full):
    """``reduced`` under ``make test``, ``full`` under ``make test-full`` (read when called)."""
    return full if full_size() else reduced


def benchmark(name: str):
    """benchmarks/<name>.py imported as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pytest_report_header(config) -> str:
    return (f"science checks: {'full size' if full_size() else 'reduced'} "
            f"({FULL_ENV}={os.environ.get(FULL_ENV, '')!r}; `make test-full` for full size)")


@pytest.fixture(scope="session")
def full() -> bool:
    """Whether this session runs the science checks at full size (see :func:`full_size`)."""
    return full_size()


@pytest.fixture
def real_nwb() -> Path:
    """A phy export from pynapple's test data: 3 units, 21,354 spikes, an `epochs` table, no metric columns."""
    assert REAL_NWB.exists(), f"missing test data {REAL_NWB}"
    return REAL_NWB


@pytest.fixture
def small_session() -> Session:
    """A tiny VBN-like session: 4 units in 3 areas, active block, gray, passive replay, trials, behaviour, ground truth."""
    rng = np.random.default_rng(0)
    ids = np.array([5, 3, 9, 12], dtype=np.int64)
    trains = [np.sort(rng.uniform(0, 13, n)) for n in (10, 0, 50, 7)]
    units = pd.DataFrame(
        {"area": ["VISp", "VISp", "LP", "VISl"], "cell_type": ["rs", "fs", "rs", "unknown"],
         "quality": ["good", "noise", "good", "good"], "isi_violations": [0.1, 0.2, np.nan, 1.0],
         "peak_channel_id": [100, 101, 200, 300]},
        index=pd.Index(ids, name="unit_id"))
    images = ["im_a", "im_b", "omitted", "im_b", "im_c"]
    flashes = pd.DataFrame({
        "start_time": np.r_[np.arange(5) * 0.75, 10 + np.arange(5) * 0.75],
        "stimulus_block": [0] * 5 + [2] * 5, "stimulus_name": ["Natural_Images_G"] * 10, "image_name": images * 2,
        "active": [True] * 5 + [False] * 5, "omitted": [x == "omitted" for x in images] * 2,
        "is_change": [False, True, False, False, True] * 2})
    flashes["stop_time"] = flashes["start_time"] + 0.25
    gray = pd.DataFrame({"start_time": [4.0], "stop_time": [10.0], "stimulus_block": [1], "stimulus_name": ["spontaneous"]})
    stimuli = pd.concat([flashes, gray]).sort_values("start_time", kind="mergesort", ignore_index=True)
    epochs = pd.DataFrame({"start_time": [0.0, 4.0, 10.0], "stop_time": [3.25, 10.0, 13.25],
                           "state": ["active", "gray", "passive"], "block": [0, 1, 2],
                           "stimulus_name": ["Natural_Images_G", "spontaneous", "Natural_Images_G"]})
    trials = pd.DataFrame({"start_time": [0.0, 1.5], "stop_time": [1.5, 3.25], "go": [True, True], "hit": [True, False],
                           "miss": [False, True], "lick_times": [[0.9, 1.0], []], "response_time": [0.15, np.nan]})
    behavior = {"running_speed": BehaviorSeries(np.arange(0, 13, 0.5), rng.normal(size=26), "cm/s"),
                "licks": BehaviorSeries(np.array([0.9, 1.0])), "rewards": BehaviorSeries(np.array([0.95])),
                "pupil_area": BehaviorSeries(np.arange(13.0), np.arange(13.0) * 2)}
    loadings = rng.normal(size=(4, 3)).astype(np.float32)
    truth = {"latents": rng.normal(size=(1300, 3)).astype(np.float32), "loadings": loadings,
             "baseline_hz": np.array([1.0, 2.0, 3.0, 4.0]),
             "state_gain": {"active": np.ones(4), "passive": np.full(4, 1.5)},
             "state_offset": {"active": np.zeros(4), "passive": np.full(4, 0.2)},
             "state_remix": {"active": loadings, "passive": -loadings}}
    gt = GroundTruth(truth.__getitem__, latent_dt=0.01, latent_t0=0.0, n_latents=3, unit_ids=ids)
    return Session("sim-small", units, InMemorySpikes(SpikeTrains.from_list(ids, trains)), epochs, stimuli, trials,
                   behavior, gt, metadata={"session_description": "tiny test session"})


def serving(server):
    """For a fixture: run an ``http.server`` server (on 127.0.0.1) in a thread, yield it, then shut it down."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def toy_student():
    """(cfg, counts, latents, split, net): a 30-neuron student, bias-calibrated, on a 20-unit synthetic session of
    3,000 bins (blocks of 100), for evaluation tests that need a network but no training."""
    import torch

    from neurojepa.student.config import StudentConfig
    from neurojepa.student.network import StudentNet
    from neurojepa.synthetic.toy import synthetic_session

    torch.manual_seed(0)
    cfg = StudentConfig(n_exc=24, n_inh=6, window=8, burn_in=2, batch_size=4, eval_chunk=40, eval_warmup=4, eval_spike_chunks=8)
    counts, lat, split = synthetic_session(n_units=20, n_bins=3000, d=3, seed=0, block=100)
    net = StudentNet(20, 3, cfg, bin_size=0.01)
    net.calibrate_bias(torch.tensor(counts[:120].reshape(4, 30, 20).astype(np.float32)))
    return cfg, counts, lat, split, net
