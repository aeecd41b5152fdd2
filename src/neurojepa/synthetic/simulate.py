"""A VBN-like session with known ground truth: the default data of neurojepa.

``simulate_session(seed)`` builds an in-memory :class:`~neurojepa.data.session.Session` that looks like an Allen
Visual Behavior Neuropixels recording (RESEARCH.md §1) but whose hidden variables are known;
``simulate_to_nwb(out, seed)`` writes it as VBN-layout NWB. Design notes: ``docs/simulator.md``.

Timeline
    Block 0 ``active``: change detection with 8 natural images, 250 ms flash + 500 ms gray. Changes come after a
    geometric number of flashes (4 to 11 unchanged flashes before each change point); 25 % of change points are
    catch trials (the image stays). ~5 % of flashes are omitted, never a change flash nor the flash just before
    one. An observer model licks (hit p=0.6 on go trials, false alarm p=0.1 on catch trials, first lick 150-750 ms
    after the change, a bout of licks after it, rare spontaneous licks elsewhere) and is rewarded on hits.
    Block 1: a short gray period (``spontaneous``). ``preset="vbn"`` inserts gabors (15 min), a 5 min spontaneous
    gray and full-field flashes (5 min) here, as in VBN. Last block ``passive``: exactly the same image/omission
    sequence replayed, no rewards, almost no licks. Running speed is a slow stochastic process (60 Hz) in all blocks.

Latents (the ground truth a model should recover), ``z(t)``: (T, 8) float32 at ``dt = 10 ms``, each dimension
z-scored over the session. The SAME generator runs in every block (states change the code, not the latents):

    z[0:4] image-specific transients: each image has a response vector in R^4; every flash adds an alpha-shaped
           transient (40 ms latency, tau 80 ms) scaled by adaptation ``0.35 + 0.65 exp(-k / 1.5)`` (``k`` flashes
           since the last change) and a +-15 % jitter, plus slow noise;
    z[4]   change response (+, tau 80 ms) and omission response (-, 120 ms latency, tau 120 ms), plus slow noise;
    z[5:7] a slow noisy rotation: a damped complex AR(1) at 0.3 Hz with a 3 s decay (autonomous);
    z[7]   a running-coupled mode: running speed, smoothed (autonomous, shared with behaviour).

Everything is smoothed with time constants >= 50 ms.

Population code (unit ``u``, state ``s`` = ``"active"`` inside the active block, ``"passive"`` everywhere else)::

    rate_u(t) = baseline_hz[u] * state_gain[s][u] * f( (loadings[u] + state_remix[s][u]) . z(t) + state_offset[s][u] )
    f(x)      = log(1 + e^x) / log(2)          # softplus normalised so that f(0) = 1 (rate = baseline at z = 0)

with lognormal baselines (regular-spiking median 2.5 Hz, fast-spiking x2.5, clipped to 0.15-45 Hz), loadings of
norm ~2 (so rates swing several-fold), per-unit gains and offsets that shift rates up in the active block (more
strongly in higher areas and LP), and a remix of the tuning: ``state_remix[s] = loadings @ (R_s - I) + private_s``
where ``R_active``/``R_passive`` rotate the image plane pairs (z0, z1) and (z2, z3) by +-22.5 deg (45 deg apart) and
``private_s`` is a fresh random perturbation per unit and state (~0.4 of the loading norm). With the default
session a logistic-regression image decoder on raw counts drops from ~0.99 (held-out, same state) to ~0.5 in the
other state, while ``z`` stays linearly decodable within each state.

Spikes: inhomogeneous Poisson at the piecewise-constant 10 ms rate with a 2 ms absolute refractory period
(time-rescaling, :func:`_poisson_refractory`), then the recording's imperfections that make units fail QC:
bursty contamination by another neuron's spikes (raises ``isi_violations``), units drifting out of range for a
stretch at the start or end (lowers ``presence_ratio``), ``amplitude_cutoff`` drawn (0.5 = "cannot estimate",
more often for sparse units), ``quality = "noise"`` labels. ``isi_violations``, ``presence_ratio`` and
``firing_rate`` are computed from the final spikes (:mod:`neurojepa.data.quality_metrics`). Contamination spikes
are not part of the true rate.

Memory: the default preset keeps spikes in memory (:class:`~neurojepa.data.session.InMemorySpikes`). The ``vbn``
preset (~2,000 units, ~2.4 h, ~1e8 spikes) uses :class:`SimulatedSpikes`, which regenerates a unit's spikes on
demand from ``(seed, unit)``; nothing of size units x time is ever held (rates are computed one unit at a time).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numba
import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter1d
from scipy.signal import lfilter, oaconvolve

from ..errors import InputError
from ..data.quality_metrics import firing_rate, isi_violations, presence_ratio
from ..data.session import (
    STATE_ACTIVE,
    STATE_PASSIVE,
    BehaviorSeries,
    GroundTruth,
    InMemorySpikes,
    Session,
    SpikeTrains,
)

log = logging.getLogger(__name__)

AREAS = ("VISp", "VISl", "VISal", "VISrl", "VISam", "VISpm", "LP")
AREA_WEIGHTS = (0.20, 0.14, 0.14, 0.10, 0.10, 0.14, 0.18)
# VBN probe placement (probe A..F -> VISam, VISpm, VISp, VISl, VISal, VISrl); LP is reached by the deep end of C and D
AREA_PROBES = {"VISam": "probeA", "VISpm": "probeB", "VISp": "probeC", "VISl": "probeD", "VISal": "probeE",
               "VISrl": "probeF", "LP": "probeC"}
# engagement modulation grows along the hierarchy and is strongest in thalamus (RESEARCH.md §1)
AREA_ENGAGEMENT = {"VISp": 0.6, "VISl": 0.8, "VISal": 0.9, "VISrl": 0.9, "VISam": 1.0, "VISpm": 1.0, "LP": 1.4}
IMAGE_STIMULUS = "Natural_Images_Lum_Matched_set_ophys_G_2019"
IMAGES = ("im012_r", "im036_r", "im044_r", "im047_r", "im078_r", "im083_r", "im104_r", "im111_r")
LATENT_NAMES = ("image_0", "image_1", "image_2", "image_3", "change_omission", "rotation_x", "rotation_y", "running")
N_LATENTS = len(LATENT_NAMES)
LATENT_DT = 0.01  # s
FLASH_S, ISI_S = 0.25, 0.5  # s, image on / gray between
RUNNING_HZ = 60.0
STATES = (STATE_ACTIVE, STATE_PASSIVE)


@dataclass(frozen=True)
class SimConfig:
    """Every knob of the simulator; presets in :data:`PRESETS`, any field overridable by ``simulate_session``."""

    n_units: int = 400
    block_minutes: float = 15.0  # length of the active block and of its passive replay
    gray_s: float = 10.0  # gray after the active block
    vbn_blocks: bool = False  # gabor / spontaneous / flash blocks between active and passive
    in_memory: bool = True  # False: spikes regenerated on demand (SimulatedSpikes)
    # None: the stimulus response vectors come from the session's own seed; an int: from this seed, so sessions
    # with the same dynamics_seed share the latent generator (simulate_sessions, docs/scale.md)
    dynamics_seed: Optional[int] = None
    # task
    change_p: float = 0.3  # geometric parameter of the number of extra flashes before a change
    min_flashes: int = 4  # unchanged flashes before a change point, at least ...
    max_flashes: int = 11  # ... and at most
    catch_fraction: float = 0.25
    omission_fraction: float = 0.05
    hit_rate: float = 0.6
    false_alarm_rate: float = 0.1
    # code
    baseline_median_hz: float = 2.5  # regular-spiking units
    baseline_sigma: float = 0.85  # of log baseline
    fs_fraction: float = 0.17
    fs_rate_factor: float = 2.5
    loading_scale: float = 2.0  # norm of a typical unit's loading vector
    remix_scale: float = 0.6  # norm of each unit's private per-state tuning change relative to its loadings
    image_remix_deg: float = 45.0  # shared rotation of the image subspace between active and passive (degrees)
    state_rate_shift: float = 0.12  # log-gain shift (+ active, - passive) at engagement 1
    state_offset_shift: float = 0.15  # drive offset shift (+ active, - passive) at engagement 1
    refractory_s: float = 0.002
    # unit quality
    noise_fraction: float = 0.05
    contaminated_fraction: float = 0.15
    drift_fraction: float = 0.07
    cutoff_sentinel_p: float = 0.11  # P(amplitude_cutoff = 0.5), plus more for sparse units
    cutoff_sentinel_sparse_p: float = 0.35  # extra P for units with baseline < 1 Hz


PRESETS = {
    "default": SimConfig(),
    "vbn": SimConfig(n_units=2000, block_minutes=60.0, vbn_blocks=True, in_memory=False),
}
GENERIC = "generic"  # the generic two-state preset (no task, no replay): synthetic/generic.py, GenericConfig


# ================================================================================================ task
def _task_sequence(cfg: SimConfig, n_flashes: int, rng: np.random.Generator) -> pd.DataFrame:
    """The flash sequence of the active block (replayed in the passive one), one row per flash.

    Columns: image (int), is_change, omitted, change_point (a go or catch point), flashes_since_change, trial.
    """
    image = np.zeros(n_flashes, np.int64)
    is_change = np.zeros(n_flashes, bool)
    change_point = np.zeros(n_flashes, bool)
    trial = np.zeros(n_flashes, np.int64)
    cur = int(rng.integers(len(IMAGES)))
    i, j = 0, 0
    while i < n_flashes:
        gap = min(cfg.min_flashes + rng.geometric(cfg.change_p) - 1, cfg.max_flashes)
        seg = slice(i, min(i + gap, n_flashes))
        image[seg], trial[seg] = cur, j
        c = i + gap  # the change point
        if c >= n_flashes:
            break
        change_point[c], trial[c] = True, j
        if rng.random() >= cfg.catch_fraction:  # go trial: a different image
            cur = int((cur + rng.integers(1, len(IMAGES))) % len(IMAGES))
            is_change[c] = True
        image[c] = cur
        i, j = c + 1, j + 1
    # omissions: never a change point nor the flash before one (the pre-change image must be seen)
    eligible = ~change_point & ~np.r_[change_point[1:], False]
    eligible[0] = False
    p = min(1.0, cfg.omission_fraction * n_flashes / max(1, eligible.sum()))
    omitted = eligible & (rng.random(n_flashes) < p)
    since = np.zeros(n_flashes, np.int64)
    k = 0
    for f in range(n_flashes):  # flashes since the last real change (0 on the change flash)
        k = 0 if is_change[f] else k + 1
        since[f] = k
    return pd.DataFrame(dict(image=image, is_change=is_change, omitted=omitted, change_point=change_point,
                             flashes_since_change=since, trial=trial))


def _observer(cfg: SimConfig, seq: pd.DataFrame, onsets: np.ndarray, block: tuple[float, float],
              rng: np.random.Generator):
    """Observer model of the active block: (trials DataFrame, lick times, reward times, rewarded per flash)."""
    cps = np.flatnonzero(seq["change_point"].to_numpy())
    go = seq["is_change"].to_numpy()[cps]
    respond = np.where(go, rng.random(len(cps)) < cfg.hit_rate, rng.random(len(cps)) < cfg.false_alarm_rate)
    latency = np.clip(rng.lognormal(np.log(0.42), 0.25, len(cps)), 0.16, 0.74)
    change_t = onsets[cps]
    licks = []
    for t, r, lat in zip(change_t, respond, latency):
        if r:  # a bout of 3-8 licks at ~7 Hz
            n = int(rng.integers(3, 9))
            licks.append(t + lat + np.r_[0.0, np.cumsum(rng.normal(0.14, 0.015, n - 1))])
    # rare spontaneous licks outside every response window, so that hits/false alarms stay well defined
    spont = np.sort(rng.uniform(block[0], block[1], rng.poisson(0.02 * (block[1] - block[0]))))
    in_window = np.zeros(len(spont), bool)
    for t in change_t:
        in_window |= (spont >= t) & (spont < t + 0.75 + 1.2)
    licks.append(spont[~in_window])
    licks = np.sort(np.concatenate(licks)) if licks else np.zeros(0)
    starts = np.r_[block[0], onsets[cps[:-1] + 1]] if len(cps) else np.zeros(0)
    stops = np.r_[starts[1:], block[1]] if len(cps) else np.zeros(0)
    images = np.asarray(IMAGES)
    initial = images[seq["image"].to_numpy()[np.maximum(cps - 1, 0)]]
    resp_t = np.where(respond, change_t + latency, np.nan)
    hit = go & respond
    trials = pd.DataFrame(dict(
        start_time=starts, stop_time=stops, initial_image_name=initial,
        change_image_name=images[seq["image"].to_numpy()[cps]], is_change=go, go=go, catch=~go,
        hit=hit, miss=go & ~respond, false_alarm=~go & respond, correct_reject=~go & ~respond,
        aborted=np.zeros(len(cps), bool), auto_rewarded=np.zeros(len(cps), bool),
        change_time=change_t, change_frame=np.round((change_t - block[0]) * 60).astype(np.int64),
        response_time=resp_t, response_latency=np.where(respond, latency, np.nan),
        reward_time=np.where(hit, resp_t, np.nan), reward_volume=np.where(hit, 0.003, 0.0),
    ))
    rewarded = np.zeros(len(seq), bool)
    rewarded[cps[hit]] = True
    return trials, licks, resp_t[hit], rewarded


def _flash_rows(seq: pd.DataFrame, onsets: np.ndarray, block: int, active: bool, rewarded: np.ndarray) -> pd.DataFrame:
    omitted = seq["omitted"].to_numpy()
    names = np.where(omitted, "omitted", np.asarray(IMAGES)[seq["image"].to_numpy()])
    return pd.DataFrame(dict(
        start_time=onsets, stop_time=onsets + FLASH_S, duration=FLASH_S, stimulus_block=block,
        stimulus_name=IMAGE_STIMULUS, image_name=names, is_change=seq["is_change"].to_numpy(), omitted=omitted,
        active=active, flashes_since_change=seq["flashes_since_change"].to_numpy(), rewarded=rewarded & active,
        trials_id=seq["trial"].to_numpy() if active else -1, is_image_novel=False,
    ))


def _timeline(cfg: SimConfig, rng: np.random.Generator):
    """Epochs, stimuli, trials, licks, rewards and the (flash, gabor, full-field) event lists for the latents."""
    n_flashes = int(cfg.block_minutes * 60 / (FLASH_S + ISI_S))
    if n_flashes < 2 * (cfg.max_flashes + 1):
        raise InputError("minutes", f"{cfg.block_minutes} min per block is too short for a change-detection block")
    seq = _task_sequence(cfg, n_flashes, rng)
    offsets = np.arange(n_flashes) * (FLASH_S + ISI_S)
    a_on = offsets.copy()
    a_end = float(a_on[-1] + FLASH_S)
    trials, licks, rewards, rewarded = _observer(cfg, seq, a_on, (0.0, a_end), rng)
    rows = [_flash_rows(seq, a_on, 0, True, rewarded)]
    epochs = [(0.0, a_end, STATE_ACTIVE, 0, IMAGE_STIMULUS)]
    extra = {"gabor": [], "fullfield": []}  # (onset, kind) events that drive the latents

    def gray(t0: float, dur: float, block: int) -> float:
        rows.append(pd.DataFrame(dict(start_time=[t0], stop_time=[t0 + dur], duration=[dur], stimulus_block=[block],
                                      stimulus_name=["spontaneous"], active=[False])))
        epochs.append((t0, t0 + dur, "gray" if dur < 60 else "spontaneous", block, "spontaneous"))
        return t0 + dur

    t, block = gray(a_end, cfg.gray_s, 1), 2
    if cfg.vbn_blocks:
        # gabors: 250 ms each, back to back, 3 orientations x 9 x 9 positions in random order
        n = int(15 * 60 / 0.25)
        ori = rng.integers(0, 3, n)
        on = t + np.arange(n) * 0.25
        rows.append(pd.DataFrame(dict(start_time=on, stop_time=on + 0.25, duration=0.25, stimulus_block=block,
                                      stimulus_name="gabor_20_deg_250ms", orientation=ori * 45.0,
                                      position_x=rng.integers(-4, 5, n) * 10.0,
                                      position_y=rng.integers(-4, 5, n) * 10.0, active=False)))
        epochs.append((t, float(on[-1] + 0.25), "gabor", block, "gabor_20_deg_250ms"))
        extra["gabor"] = list(zip(on, ori))
        t, block = gray(float(on[-1] + 0.25), 5 * 60.0, block + 1), block + 2
        n = int(5 * 60 / 2.0)  # full-field flashes every 2 s
        on = t + np.arange(n) * 2.0
        color = rng.choice([-1.0, 1.0], n)
        rows.append(pd.DataFrame(dict(start_time=on, stop_time=on + 0.25, duration=0.25, stimulus_block=block,
                                      stimulus_name="flash_250ms", color=color, active=False)))
        epochs.append((t, float(on[-1] + 0.25), "flash", block, "flash_250ms"))
        extra["fullfield"] = list(zip(on, color))
        t, block = float(on[-1] + 0.25 + 1.0), block + 1
    p_on = t + offsets
    rows.append(_flash_rows(seq, p_on, block, False, rewarded))
    epochs.append((t, float(p_on[-1] + FLASH_S), STATE_PASSIVE, block, IMAGE_STIMULUS))
    # the mouse almost never licks in the passive replay (spout withdrawn)
    p_licks = np.sort(rng.uniform(t, p_on[-1], rng.poisson(0.002 * (p_on[-1] - t))))
    stimuli = pd.concat(rows, ignore_index=True).sort_values("start_time", kind="mergesort", ignore_index=True)
    for col, fill in (("is_change", False), ("omitted", False), ("rewarded", False), ("is_image_novel", False)):
        stimuli[col] = stimuli[col].astype("boolean").fillna(fill).astype(bool)
    stimuli["active"] = stimuli["active"].astype(bool)
    epochs = pd.DataFrame(epochs, columns=["start_time", "stop_time", "state", "block", "stimulus_name"])
    return dict(seq=seq, a_on=a_on, p_on=p_on, stimuli=stimuli, trials=trials, epochs=epochs,
                licks=np.sort(np.r_[licks, p_licks]), rewards=rewards, extra=extra, t_end=float(epochs.stop_time.max()))


# ================================================================================================ latents
def _ar1(n: int, tau_s: float, dt: float, rng: np.random.Generator, complex_hz: float = 0.0) -> np.ndarray:
    """(n,) unit-variance AR(1) (an OU process sampled at dt); complex and rotating at ``complex_hz`` when set."""
    a = np.exp(-dt / tau_s) * (np.exp(2j * np.pi * complex_hz * dt) if complex_hz else 1.0)
    e = rng.standard_normal(n) + (1j * rng.standard_normal(n) if complex_hz else 0.0)
    x = lfilter([np.sqrt(1 - abs(a) ** 2)], [1, -a], e)
    return x


def _running_speed(t_end: float, epochs: pd.DataFrame, rng: np.random.Generator) -> BehaviorSeries:
    """Running speed (cm/s) at 60 Hz: bouts of running from a slow OU process, a bit faster in the active block."""
    ts = np.arange(0.0, t_end, 1 / RUNNING_HZ)
    slow = _ar1(len(ts), 20.0, 1 / RUNNING_HZ, rng)
    fast = _ar1(len(ts), 0.3, 1 / RUNNING_HZ, rng)
    active = (ts >= epochs.start_time.iloc[0]) & (ts < epochs.stop_time.iloc[0])
    drive = 2.5 * (slow + np.where(active, 0.2, -0.1))
    speed = 30.0 / (1 + np.exp(-drive)) + 2.0 * fast
    return BehaviorSeries(timestamps=ts, data=speed, unit="cm/s")


def _alpha_kernel(latency_s: float, tau_s: float, dt: float = LATENT_DT) -> np.ndarray:
    """Alpha function peaking at 1, ``latency_s`` after the event; 8 tau long."""
    t = np.arange(0.0, latency_s + 8 * tau_s, dt) - latency_s
    k = np.where(t > 0, (t / tau_s) * np.exp(1 - t / tau_s), 0.0)
    return k


def _impulses(times: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """(n, k) impulse trains on the latent grid: ``weights`` (len(times), k) added at each event's bin."""
    out = np.zeros((n, weights.shape[1]))
    idx = np.floor(np.asarray(times) / LATENT_DT + 1e-9).astype(np.int64)
    np.add.at(out, idx, weights)
    return out


def _response_vectors(rng: np.random.Generator) -> dict:
    """The stimulus -> latent maps of the generator: image (8, 4) unit vectors, gabor orientation (3, 4), full-field
    (4,). Drawn in this order from ``rng`` (the order of the single-session stream, kept so old seeds reproduce)."""
    img_vec = rng.standard_normal((len(IMAGES), 4))
    return {"image": img_vec / np.linalg.norm(img_vec, axis=1, keepdims=True)}


def shared_dynamics(dynamics_seed: int) -> dict:
    """The response vectors every session of a ``dynamics_seed`` shares (see :func:`simulate_sessions`)."""
    rng = np.random.default_rng([int(dynamics_seed), 0x5EED])
    out = _response_vectors(rng)
    out["gabor"] = rng.standard_normal((3, 4)) * 0.5
    out["fullfield"] = rng.standard_normal(4)
    return out


def _latents(tl: dict, running: BehaviorSeries, rng: np.random.Generator, shared: dict | None = None) -> np.ndarray:
    """(T, 8) float32 latents on the grid ``k * LATENT_DT`` (see the module docstring), each z-scored.

    shared: response vectors from :func:`shared_dynamics` replacing the session's own draws (the draws are still
    made, so the rest of the session's random stream is the same as without)."""
    n = int(np.ceil(tl["t_end"] / LATENT_DT))
    seq = tl["seq"]
    img_vec = _response_vectors(rng)["image"]
    if shared is not None:
        img_vec = shared["image"]
    shown = ~seq["omitted"].to_numpy()
    k = seq["flashes_since_change"].to_numpy()
    on = np.concatenate([tl["a_on"], tl["p_on"]])
    rep = lambda a: np.concatenate([a, a])  # noqa: E731 - the same sequence in both task blocks
    amp = rep(np.where(shown, 0.35 + 0.65 * np.exp(-k / 1.5), 0.0)) * rng.uniform(0.85, 1.15, len(on))
    onehot = np.eye(len(IMAGES))[rep(seq["image"].to_numpy())] * amp[:, None]
    stim = oaconvolve(_impulses(on, onehot, n), _alpha_kernel(0.04, 0.08)[:, None], axes=0)[:n] @ img_vec
    change = rep(seq["is_change"].to_numpy()).astype(float) * rng.uniform(0.85, 1.15, len(on))
    omit = rep(seq["omitted"].to_numpy()).astype(float)
    evt = (oaconvolve(_impulses(on, change[:, None], n)[:, 0], _alpha_kernel(0.05, 0.08))[:n]
           - 0.8 * oaconvolve(_impulses(on, omit[:, None], n)[:, 0], _alpha_kernel(0.12, 0.12))[:n])
    if tl["extra"]["gabor"]:
        g_on, ori = map(np.asarray, zip(*tl["extra"]["gabor"]))
        g_vec = rng.standard_normal((3, 4)) * 0.5
        g_vec = g_vec if shared is None else shared["gabor"]
        stim += oaconvolve(_impulses(g_on, np.eye(3)[ori], n), _alpha_kernel(0.04, 0.06)[:, None], axes=0)[:n] @ g_vec
    if tl["extra"]["fullfield"]:
        f_on, color = map(np.asarray, zip(*tl["extra"]["fullfield"]))
        resp = oaconvolve(_impulses(f_on, color[:, None], n)[:, 0], _alpha_kernel(0.04, 0.08))[:n]
        ff_vec = rng.standard_normal(4)
        ff_vec = ff_vec if shared is None else shared["fullfield"]
        stim += resp[:, None] * ff_vec[None, :]
        evt += 0.7 * np.abs(resp)
    z = np.empty((n, N_LATENTS))
    z[:, :4], z[:, 4] = stim, evt
    # slow noise keeps the stimulus dimensions from being a deterministic function of the stimulus
    for d in range(5):
        z[:, d] += 0.3 * np.std(z[:, d]) * _ar1(n, 0.5, LATENT_DT, rng)
    rot = _ar1(n, 3.0, LATENT_DT, rng, complex_hz=0.3)
    z[:, 5], z[:, 6] = rot.real, rot.imag
    grid = np.arange(n) * LATENT_DT
    z[:, 7] = np.interp(grid, running.timestamps, running.data)
    z[:, 5:] = gaussian_filter1d(z[:, 5:], sigma=5, axis=0)  # 50 ms: no faster than the stimulus transients
    z = (z - z.mean(0)) / z.std(0)
    return z.astype(np.float32)


# ================================================================================================ units
def _unit_table(cfg: SimConfig, n_units: int, rng: np.random.Generator) -> tuple[pd.DataFrame, dict]:
    """Unit properties (area, probe, channel, type, waveform, snr, labels) and the code's parameters."""
    area = rng.choice(AREAS, n_units, p=AREA_WEIGHTS)
    fs = rng.random(n_units) < cfg.fs_fraction
    wd = np.where(fs, rng.normal(0.30, 0.04, n_units).clip(0.18, 0.39), rng.normal(0.62, 0.1, n_units).clip(0.42, 1.0))
    deep = area == "LP"
    probe = np.array([AREA_PROBES[a] for a in area], dtype=object)
    probe[deep] = rng.choice(["probeC", "probeD"], deep.sum())
    channel = np.where(deep, rng.integers(0, 120, n_units), rng.integers(180, 384, n_units))
    probe_idx = np.array(["ABCDEF".index(p[-1]) for p in probe])
    baseline = np.exp(rng.normal(np.log(cfg.baseline_median_hz), cfg.baseline_sigma, n_units))
    baseline = np.clip(baseline * np.where(fs, cfg.fs_rate_factor, 1.0), 0.15, 45.0)
    noise = rng.random(n_units) < cfg.noise_fraction
    # code: a loading vector per unit, a remix per state, gain and offset per state
    scale = cfg.loading_scale * rng.uniform(0.6, 1.4, n_units) * np.where(noise, 0.2, 1.0)
    loadings = rng.standard_normal((n_units, N_LATENTS)) * (scale / np.sqrt(N_LATENTS))[:, None]
    engagement = np.array([AREA_ENGAGEMENT[a] for a in area])
    remix_amount = cfg.remix_scale * rng.uniform(0.4, 1.0, n_units) * scale / np.sqrt(N_LATENTS)
    gain, offset, remix = {}, {}, {}
    for sign, s in ((1.0, STATE_ACTIVE), (-1.0, STATE_PASSIVE)):
        gain[s] = np.exp(rng.normal(sign * cfg.state_rate_shift * engagement, 0.2))
        offset[s] = rng.normal(sign * cfg.state_offset_shift * engagement, 0.25)
        # a shared rotation of the image subspace (+-angle/2 per state, planes (0,1) and (2,3)): the population
        # reads the images differently in each state; plus a private random change per unit
        rot = _plane_rotations(sign * np.deg2rad(cfg.image_remix_deg) / 2)
        remix[s] = loadings @ (rot - np.eye(N_LATENTS)) + rng.standard_normal((n_units, N_LATENTS)) * remix_amount[:, None]
    # recording imperfections
    contaminated = rng.random(n_units) < cfg.contaminated_fraction
    target_isi = np.where(contaminated, np.exp(rng.uniform(np.log(0.05), np.log(3.0), n_units)), 0.0)
    drift = rng.random(n_units) < cfg.drift_fraction
    drift_frac = np.where(drift, rng.uniform(0.05, 0.5, n_units), 0.0)
    drift_at_end = rng.random(n_units) < 0.5
    p_sentinel = cfg.cutoff_sentinel_p + cfg.cutoff_sentinel_sparse_p * (baseline < 1.0) + 0.4 * noise
    cutoff = np.minimum(rng.exponential(0.025, n_units) + drift * rng.uniform(0.0, 0.3, n_units), 0.49)
    cutoff = np.where(rng.random(n_units) < p_sentinel, 0.5, cutoff)
    snr = np.exp(rng.normal(np.log(np.where(noise, 0.8, 3.0)), 0.4))
    units = pd.DataFrame(dict(
        area=area, probe=probe, peak_channel_id=(probe_idx * 1000 + channel).astype(np.int64),
        cell_type=np.where(fs, "fs", "rs"), waveform_duration=wd, quality=np.where(noise, "noise", "good"),
        amplitude_cutoff=cutoff, snr=snr,
    ), index=pd.Index(np.arange(n_units, dtype=np.int64) + 1000, name="unit_id"))
    params = dict(baseline_hz=baseline, loadings=loadings.astype(np.float32), state_gain=gain, state_offset=offset,
                  state_remix={s: v.astype(np.float32) for s, v in remix.items()},
                  target_isi=target_isi, drift_frac=drift_frac, drift_at_end=drift_at_end)
    return units, params


def _plane_rotations(angle: float) -> np.ndarray:
    """(8, 8) rotation by ``angle`` (rad) in the planes of latents (0, 1) and (2, 3); identity elsewhere."""
    r = np.eye(N_LATENTS)
    c, s = np.cos(angle), np.sin(angle)
    for a in (0, 2):
        r[a : a + 2, a : a + 2] = [[c, -s], [s, c]]
    return r


@numba.njit(cache=True)
def _poisson_refractory(rate: np.ndarray, dt: float, t0: float, refractory: float, seed: int) -> np.ndarray:
    """Spike times (s) of a Poisson process with piecewise-constant ``rate`` (Hz, one value per ``dt`` bin from
    ``t0``) and an absolute dead time ``refractory`` (s) after each spike, by time rescaling: exponential waits
    in units of integrated rate, so the loop costs O(bins + spikes)."""
    np.random.seed(seed)
    n = rate.shape[0]
    out = np.empty(max(64, int(rate.sum() * dt * 1.2) + 64))
    count = 0
    k = 0
    pos = t0
    need = np.random.exponential(1.0)
    while k < n:
        r = rate[k]
        end = t0 + (k + 1) * dt
        avail = r * max(end - pos, 0.0)
        if r > 0 and avail >= need:
            pos += need / r
            if count == out.shape[0]:
                bigger = np.empty(2 * count)
                bigger[:count] = out
                out = bigger
            out[count] = pos
            count += 1
            pos += refractory
            need = np.random.exponential(1.0)
            k = max(k, int((pos - t0) / dt))
        else:
            need -= avail
            k += 1
            pos = end
    return out[:count]


@numba.njit(cache=True)
def _softplus_rate(z, w_act, w_pas, off_act, off_pas, scale_act, scale_pas, a0, a1):
    """(T,) rate: ``scale * softplus(z[t] . w + off)`` with the active parameters on bins [a0, a1), passive elsewhere.

    Fused in numba because it runs once per unit over the whole session (numpy would allocate 3 temporaries)."""
    n, d = z.shape
    out = np.empty(n)
    for t in range(n):
        act = a0 <= t < a1
        w = w_act if act else w_pas
        x = off_act if act else off_pas
        for j in range(d):
            x += z[t, j] * w[j]
        sp = x + np.log1p(np.exp(-x)) if x > 0 else np.log1p(np.exp(x))
        out[t] = (scale_act if act else scale_pas) * sp
    return out


ar1 = _ar1  # public names for synthetic/generic.py
poisson_refractory = _poisson_refractory


class _UnitGenerator:
    """Generates one unit's final spike train deterministically from (seed, unit position)."""

    def __init__(self, seed: int, cfg: SimConfig, latents: np.ndarray, active: tuple[int, int], t_end: float,
                 params: dict):
        self.seed, self.cfg, self.z, self.active, self.t_end, self.p = seed, cfg, latents, active, t_end, params

    def rate_hz(self, i: int) -> np.ndarray:
        """(T,) float64 true rate (Hz) of unit ``i`` (position) on the latent grid (the equation in the docstring)."""
        p, (a0, a1) = self.p, self.active
        w = {s: (p["loadings"][i] + p["state_remix"][s][i]).astype(np.float64) for s in STATES}
        scale = {s: p["baseline_hz"][i] * p["state_gain"][s][i] / np.log(2) for s in STATES}
        return _softplus_rate(self.z, w[STATE_ACTIVE], w[STATE_PASSIVE], p["state_offset"][STATE_ACTIVE][i],
                              p["state_offset"][STATE_PASSIVE][i], scale[STATE_ACTIVE], scale[STATE_PASSIVE], a0, a1)

    def spikes(self, i: int) -> np.ndarray:
        """(n,) sorted float64 spike times (s) of unit ``i`` including contamination and drift."""
        rng = np.random.default_rng([self.seed, 7919, i])
        rate = self.rate_hz(i)
        t = _poisson_refractory(rate, LATENT_DT, 0.0, self.cfg.refractory_s, int(rng.integers(2**31 - 1)))
        t = t[t < self.t_end]
        target = self.p["target_isi"][i]
        if target > 0:
            # a bursty neighbour: bursts of 2-4 spikes 0.5-3 ms apart. Hill's ratio ~ V / (2 N^2 tau / T) with
            # ~0.8 violations per burst gives the burst rate that produces the drawn target
            r = max(len(t), 1) / self.t_end
            r_burst = target * 2 * r * r * 0.00133 / 0.8
            n_b = rng.poisson(r_burst * self.t_end)
            starts = rng.uniform(0, self.t_end, n_b)
            sizes = rng.integers(2, 5, n_b)
            gaps = rng.uniform(0.0005, 0.003, (n_b, 3)).cumsum(1)
            extra = np.concatenate([starts[:, None], starts[:, None] + gaps], 1)
            extra = extra[np.arange(4)[None, :] < sizes[:, None]]
            t = np.sort(np.concatenate([t, extra[extra < self.t_end]]))
        frac = self.p["drift_frac"][i]
        if frac > 0:  # the unit drifts off the probe's sites for a stretch at one end of the session
            cut = (1 - frac) * self.t_end if self.p["drift_at_end"][i] else frac * self.t_end
            t = t[t < cut] if self.p["drift_at_end"][i] else t[t >= cut]
        return t


class _GeneratedTrains:
    """Looks like a :class:`SpikeTrains` to :class:`InMemorySpikes` (``unit_ids``, ``n_spikes``, ``[i]``) but
    regenerates the i-th unit's train on each access instead of holding it."""

    def __init__(self, generator: _UnitGenerator, unit_ids: np.ndarray, counts: np.ndarray):
        self.generator = generator
        self.unit_ids = np.asarray(unit_ids, dtype=np.int64)
        self.n_spikes = np.asarray(counts, dtype=np.int64)
        self.on_read = None  # optional callback(n_units_read), e.g. a progress bar's update

    def __len__(self) -> int:
        return len(self.unit_ids)

    def __getitem__(self, i: int) -> np.ndarray:
        if self.on_read is not None:
            self.on_read(1)
        return self.generator.spikes(i)


class SimulatedSpikes(InMemorySpikes):
    """A :class:`~neurojepa.data.session.SpikeSource` that regenerates each unit's spikes on demand.

    Deterministic: unit ``u`` always gets the same train (a function of the session seed and its position), so
    memory holds only what is asked for. ``spike_counts()`` is known from the one pass that computed the metrics.
    The reading logic (ids, time window) is :class:`InMemorySpikes`'s, over :class:`_GeneratedTrains`.
    """

    def __init__(self, generator: _UnitGenerator, unit_ids: np.ndarray, counts: np.ndarray):
        super().__init__(_GeneratedTrains(generator, unit_ids, counts))  # type: ignore[arg-type]
        self.generator = generator


def _progress(iterable, total: int, desc: str):
    """tqdm on a terminal for long loops; silent in tests and pipes."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="unit", disable=total < 1000 and not log.isEnabledFor(logging.INFO),
                leave=False)


# ================================================================================================ public
def _config(preset: str, n_units: int | None, minutes: float | None, overrides: dict) -> SimConfig:
    if preset not in PRESETS:
        raise InputError("preset", f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    fields = {f.name for f in dataclasses.fields(SimConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise InputError("simulate", f"unknown setting(s) {', '.join(bad)}")
    if n_units is not None:
        overrides["n_units"] = n_units
    if minutes is not None:
        overrides["block_minutes"] = minutes
    cfg = dataclasses.replace(cfg, **overrides)
    if cfg.n_units < 1:
        raise InputError("units", f"need at least 1 unit, got {cfg.n_units}")
    if not cfg.block_minutes > 0:
        raise InputError("minutes", f"must be positive, got {cfg.block_minutes}")
    return cfg


def simulate_session(seed: int = 0, n_units: int | None = None, minutes: float | None = None,
                     preset: str = "default", **overrides) -> Session:
    """A simulated VBN-like :class:`Session` with ground truth (see the module docstring).

    seed: everything is a function of it; n_units / minutes (per task block) override the preset's;
    overrides: any :class:`SimConfig` field. Raises :class:`InputError` on unknown presets or settings.
    """
    if preset == GENERIC:  # no task, no replay: its own module (synthetic/generic.py)
        from .generic import simulate_generic

        return simulate_generic(seed, n_units, minutes, **overrides)
    cfg = _config(preset, n_units, minutes, dict(overrides))
    if int(seed) < 0:
        raise InputError("seed", f"must be a non-negative integer, got {seed}")
    streams = np.random.SeedSequence(seed).spawn(4)
    task_rng, run_rng, lat_rng, unit_rng = (np.random.default_rng(s) for s in streams)
    tl = _timeline(cfg, task_rng)
    running = _running_speed(tl["t_end"], tl["epochs"], run_rng)
    z = _latents(tl, running, lat_rng, None if cfg.dynamics_seed is None else shared_dynamics(cfg.dynamics_seed))
    units, params = _unit_table(cfg, cfg.n_units, unit_rng)
    ep = tl["epochs"]
    act = ep[ep.state == STATE_ACTIVE].iloc[0]
    active_bins = (int(round(act.start_time / LATENT_DT)), int(np.ceil(act.stop_time / LATENT_DT)))
    gen = _UnitGenerator(seed, cfg, z, active_bins, tl["t_end"], params)
    t0, t1 = 0.0, tl["t_end"]
    trains, counts, metrics = [], np.zeros(cfg.n_units, np.int64), np.zeros((cfg.n_units, 3))
    for i in _progress(range(cfg.n_units), cfg.n_units, "simulating units"):
        t = gen.spikes(i)
        counts[i] = len(t)
        metrics[i] = (isi_violations(t, t0, t1)[0], presence_ratio(t, t0, t1), firing_rate(t, t0, t1))
        if cfg.in_memory:
            trains.append(t)
    units["isi_violations"], units["presence_ratio"], units["firing_rate"] = metrics.T
    ids = units.index.to_numpy()
    if cfg.in_memory:
        spikes = InMemorySpikes(SpikeTrains.from_list(ids, trains))
        spikes.generator = gen  # for true_rates(); the spikes themselves are already drawn
    else:
        spikes = SimulatedSpikes(gen, ids, counts)
    gt_arrays = {k: params[k] for k in ("baseline_hz", "loadings", "state_gain", "state_offset", "state_remix")}
    gt_arrays["latents"] = z
    gt = GroundTruth(gt_arrays.__getitem__, latent_dt=LATENT_DT, latent_t0=0.0, n_latents=N_LATENTS, unit_ids=ids)
    behavior = {"running_speed": running, "licks": BehaviorSeries(tl["licks"]), "rewards": BehaviorSeries(tl["rewards"])}
    return Session(
        session_id=f"sim-{preset}-seed{seed}", units=units, spikes=spikes, epochs=ep, stimuli=tl["stimuli"],
        trials=tl["trials"], behavior=behavior, ground_truth=gt,
        metadata=dict(session_description=f"neurojepa simulated VBN-like session (preset {preset}, seed {seed})",
                      simulator=dataclasses.asdict(cfg), seed=seed, latent_names=list(LATENT_NAMES)),
    )


def true_rates(session: Session, unit_ids: Sequence[int] | None = None) -> np.ndarray:
    """(T, n) float64 true rates (Hz, without contamination) of ``unit_ids`` on the latent grid of a session from
    :func:`simulate_session` (in memory; NWB files carry the parameters, use the equation in the module docstring)."""
    gen = getattr(session.spikes, "generator", None)
    if not isinstance(gen, _UnitGenerator):
        raise InputError(session.session_id, "true rates need a session made by simulate_session in this process")
    pos = {int(u): i for i, u in enumerate(session.units.index)}
    ids = session.units.index if unit_ids is None else unit_ids
    return np.stack([gen.rate_hz(pos[int(u)]) for u in ids], axis=1)


def simulate_to_nwb(out: str | os.PathLike, seed: int = 0, n_units: int | None = None, minutes: float | None = None,
                    preset: str = "default", **overrides) -> Path:
    """Simulate (:func:`simulate_session`, overrides: any :class:`SimConfig` field) and write VBN-layout NWB to
    ``out``; returns the path."""
    return _write_nwb(simulate_session(seed=seed, n_units=n_units, minutes=minutes, preset=preset, **overrides), out)


def parse_overrides(items, preset: str = "default") -> dict:
    """``["field=value", ...]`` -> {field: value} typed as the :class:`SimConfig` field (bool: true/false), or the
    :class:`~neurojepa.synthetic.generic.GenericConfig` field for ``preset="generic"``; InputError naming the item
    for an unknown field or a value of the wrong type."""
    if preset == GENERIC:
        from .generic import GenericConfig

        types = {f.name: f.type for f in dataclasses.fields(GenericConfig) if f.name != "states"}
    else:
        types = {f.name: f.type for f in dataclasses.fields(SimConfig)}
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep:
            raise InputError("simulate", f"'{item}' is not of the form field=value")
        if key not in types:
            close = difflib.get_close_matches(key, list(types), n=1)
            raise InputError("simulate", f"unknown setting '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        kind = str(types[key])
        try:
            if "bool" in kind:
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1", "yes")
            elif "int" in kind and "Optional" not in kind:
                out[key] = int(value)
            elif "Optional" in kind:
                out[key] = None if value.lower() in ("none", "null") else int(value)
            else:
                out[key] = float(value)
        except ValueError:
            raise InputError("simulate", f"bad value for '{key}': {value!r} (a {kind})") from None
    return out


def _write_nwb(session: Session, out: str | os.PathLike) -> Path:
    from ..data.nwb_write import write_session_nwb

    if not isinstance(session.spikes, SimulatedSpikes):
        return write_session_nwb(session, out)
    # the writer regenerates every unit once more: show that pass too
    with _progress(None, session.n_units, "writing units") as bar:
        session.spikes.trains.on_read = bar.update
        try:
            return write_session_nwb(session, out)
        finally:
            session.spikes.trains.on_read = None


# ================================================================================================ many sessions
def session_seed(seed: int, i: int) -> int:
    """The seed of session ``i`` of a multi-session set ``seed``: a non-negative int, distinct per (seed, i)."""
    return int(np.random.SeedSequence([int(seed), int(i)]).generate_state(1)[0] & 0x7FFFFFFF)


def _one_of_many(i: int, seed: int, n_units: int | None, minutes: float | None, preset: str) -> Session:
    session = simulate_session(session_seed(seed, i), n_units=n_units, minutes=minutes, preset=preset,
                               dynamics_seed=int(seed))
    session.session_id = f"sim-{preset}-set{seed}-s{i:02d}"
    session.metadata.update(set_seed=int(seed), set_index=i)
    return session


def _check_many(k: int, seed: int) -> None:
    if int(k) < 1:
        raise InputError("sessions", f"need at least 1 session, got {k}")
    if int(seed) < 0:
        raise InputError("seed", f"must be a non-negative integer, got {seed}")


def simulate_sessions(k: int, seed: int = 0, n_units: int | None = None, minutes: float | None = None,
                      preset: str = "default") -> list[Session]:
    """``k`` simulated sessions that share the latent generator but not the neurons (docs/scale.md).

    Shared (a function of ``seed``): the equations and constants of :func:`_latents` and the stimulus response
    vectors (:func:`shared_dynamics`: image, gabor and full-field -> latent maps), so latent ``d`` means the same
    thing in every session. Different (a function of :func:`session_seed` ``(seed, i)``): the task sequence and
    behaviour, the noise of the latents (rotation phase, running bouts), and the whole population: areas,
    baselines, loadings, state gains/offsets/remix, QC imperfections. Session ``i`` is
    ``simulate_session(session_seed(seed, i), dynamics_seed=seed)`` with id ``sim-<preset>-set<seed>-sNN``.
    All ``k`` sessions are held in memory; :func:`simulate_sessions_to_nwb` writes them one at a time.
    """
    _check_many(k, seed)
    return [_one_of_many(i, seed, n_units, minutes, preset) for i in range(int(k))]


def simulate_sessions_to_nwb(out_dir: str | os.PathLike, k: int, seed: int = 0, n_units: int | None = None,
                             minutes: float | None = None, preset: str = "default") -> list[Path]:
    """Write the sessions of :func:`simulate_sessions` to ``out_dir/session_00.nwb``, ... (one in memory at a time)."""
    _check_many(k, seed)
    out_dir = Path(out_dir)
    width = max(2, len(str(int(k) - 1)))
    return [_write_nwb(_one_of_many(i, seed, n_units, minutes, preset), out_dir / f"session_{i:0{width}d}.nwb")
            for i in range(int(k))]
