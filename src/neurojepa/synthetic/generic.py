"""A generic two-state recording with known ground truth: ``neurojepa simulate --preset generic``.

Unlike the VBN-like session (:mod:`neurojepa.synthetic.simulate`) there is no task, no stimulus table and no replay:
what a user's own two-state recording looks like (issue 15). Design notes: ``docs/simulator.md``.

Latents ``z(t)``: (T, 3) float32 at ``dt = 10 ms``, a Lorenz attractor (sigma 10, rho 28, beta 8/3) integrated with
fixed-step RK4 at the latent step, time scaled by ``lorenz_speed`` (Lorenz time units per second: at 1.0 one loop
around a wing takes ~0.7 s), from a random start after a burn-in, each dimension z-scored over the session. With
``drift_scale > 0`` a fourth latent ``drift`` (a slow OU process, tau ``drift_tau_s``) is added, loaded with
``drift_scale`` times the Lorenz loading norm.

States: two behavioural states (``states``, default ``engaged``/``disengaged``) alternating in blocks of uniform
random length in [``block_min_s``, ``block_max_s``], the first one random. The timeline is the session's epochs; the
NWB file stores it as ``/intervals/behavior_states`` (column ``state``), not as ``/intervals/epochs``, so the file
reads as one ``"all"`` epoch unless ``--states-from behavior_states:state`` is given.

Population code (unit ``u``, state ``s``; the same equation and stored parameters as the VBN-like simulator)::

    rate_u(t) = baseline_hz[u] * state_gain[s][u] * f( (loadings[u] + state_remix[s][u]) . z(t) + state_offset[s][u] )

``loadings`` are the first state's; per-unit log gains ``N(+-gain_shift/2, gain_sigma)`` (a log-normal gain ratio
between states) and offsets ``N(+-offset_shift/2, offset_sigma)``; the second state's remix turns a fraction
``remix_fraction`` of the units' loadings by one shared random rotation of latent space (``remix_deg``) and both
states add a small private perturbation (``private_scale`` of the loading norm). Spikes: the VBN simulator's
dead-time Poisson generator (``refractory_s``); no contamination, drift or noise units (every unit is "good").

Behaviour: running speed (cm/s, 60 Hz, ``processing/running/speed``) follows the latent in the first state
(``18 + 8 tanh(z_x)`` plus noise) and is a slow unrelated process near 2 cm/s in the second, so it is informative
in one state only.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import special_ortho_group

from ..data.quality_metrics import firing_rate, isi_violations, presence_ratio
from ..data.session import BehaviorSeries, GroundTruth, InMemorySpikes, Session, SpikeTrains
from ..errors import InputError
from .simulate import LATENT_DT, RUNNING_HZ, ar1, poisson_refractory

PRESET = "generic"
STATES_TABLE = "behavior_states"  # /intervals/<STATES_TABLE>, column "state"
LORENZ_NAMES = ("lorenz_x", "lorenz_y", "lorenz_z")


@dataclass(frozen=True)
class GenericConfig:
    """Every knob of the generic preset; any field overridable (``neurojepa simulate --preset generic field=value``)."""

    n_units: int = 200
    minutes: float = 24.0  # the whole recording
    states: tuple = ("engaged", "disengaged")
    block_min_s: float = 30.0
    block_max_s: float = 120.0
    # latent
    lorenz_speed: float = 0.8  # Lorenz time units per second (one loop ~0.9 s)
    drift_scale: float = 0.0  # > 0: a 4th latent, a slow drift, with this relative loading
    drift_tau_s: float = 120.0
    # code
    baseline_median_hz: float = 3.0
    baseline_sigma: float = 0.8
    loading_scale: float = 2.0  # norm of a typical unit's loading vector
    gain_shift: float = 0.3  # mean log gain ratio first/second state
    gain_sigma: float = 0.3  # per-unit sd of each state's log gain
    offset_shift: float = 0.3  # mean drive offset difference first - second state
    offset_sigma: float = 0.25
    remix_fraction: float = 0.3  # fraction of units whose loadings are rotated in the second state
    remix_deg: float = 90.0  # angle of that rotation (a random plane-wise rotation of latent space)
    private_scale: float = 0.15  # per-state private perturbation, relative to the loading norm
    refractory_s: float = 0.002


def generic_config(n_units: int | None = None, minutes: float | None = None, **overrides) -> GenericConfig:
    """The preset with ``n_units``/``minutes`` and any :class:`GenericConfig` field overridden (InputError naming
    unknown settings or impossible values)."""
    fields = {f.name for f in dataclasses.fields(GenericConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        close = difflib.get_close_matches(bad[0], sorted(fields), n=1)
        raise InputError("simulate", f"unknown generic setting(s) {', '.join(bad)}"
                         + (f" (did you mean '{close[0]}'?)" if close else ""))
    if n_units is not None:
        overrides["n_units"] = n_units
    if minutes is not None:
        overrides["minutes"] = minutes
    cfg = dataclasses.replace(GenericConfig(), **overrides)
    if cfg.n_units < 1:
        raise InputError("units", f"need at least 1 unit, got {cfg.n_units}")
    if not cfg.minutes * 60 >= 2 * cfg.block_min_s:
        raise InputError("minutes", f"{cfg.minutes} min is too short for two state blocks of >= {cfg.block_min_s} s")
    if len(cfg.states) != 2 or len(set(cfg.states)) != 2:
        raise InputError("states", f"need two distinct state names, got {cfg.states}")
    if not 0 < cfg.block_min_s <= cfg.block_max_s:
        raise InputError("block_min_s", "need 0 < block_min_s <= block_max_s")
    return cfg


# ------------------------------------------------------------------------------------------------ parts
def _lorenz(n: int, h: float, rng: np.random.Generator, sigma=10.0, rho=28.0, beta=8.0 / 3.0) -> np.ndarray:
    """(n, 3) Lorenz trajectory sampled every ``h`` (Lorenz time), fixed-step RK4, after a burn-in of 20 units."""

    def f(v):
        x, y, z = v
        return np.array([sigma * (y - x), x * (rho - z) - y, x * y - beta * z])

    v = rng.normal(0.0, 1.0, 3) + np.array([0.0, 1.0, 25.0])
    out = np.empty((n, 3))
    burn = int(np.ceil(20.0 / h))
    for k in range(-burn, n):
        if k >= 0:
            out[k] = v
        k1 = f(v)
        k2 = f(v + 0.5 * h * k1)
        k3 = f(v + 0.5 * h * k2)
        k4 = f(v + h * k3)
        v = v + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
    return out


def _latents(cfg: GenericConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    z = _lorenz(n, LATENT_DT * cfg.lorenz_speed, rng)
    if cfg.drift_scale > 0:
        z = np.concatenate([z, ar1(n, cfg.drift_tau_s, LATENT_DT, rng)[:, None]], axis=1)
    return ((z - z.mean(0)) / z.std(0)).astype(np.float32)


def _state_blocks(cfg: GenericConfig, t_end: float, rng: np.random.Generator) -> pd.DataFrame:
    """Alternating state blocks covering [0, t_end); a last piece shorter than block_min_s joins the one before."""
    starts, t = [], 0.0
    while t < t_end:
        starts.append(t)
        t += rng.uniform(cfg.block_min_s, cfg.block_max_s)
    if len(starts) > 1 and t_end - starts[-1] < cfg.block_min_s:
        starts.pop()
    stops = starts[1:] + [t_end]
    first = int(rng.integers(2))
    state = [cfg.states[(first + i) % 2] for i in range(len(starts))]
    return pd.DataFrame(dict(start_time=np.asarray(starts, float), stop_time=np.asarray(stops, float), state=state,
                             block=np.arange(len(starts)), stimulus_name=state))


def _code(cfg: GenericConfig, d: int, rng: np.random.Generator) -> dict:
    """The population code's parameters (stored as ground truth)."""
    n = cfg.n_units
    baseline = np.clip(np.exp(rng.normal(np.log(cfg.baseline_median_hz), cfg.baseline_sigma, n)), 0.2, 40.0)
    scale = cfg.loading_scale * rng.uniform(0.6, 1.4, n)
    col_scale = np.r_[np.ones(3), np.full(d - 3, cfg.drift_scale)] / np.sqrt(3)
    loadings = rng.standard_normal((n, d)) * scale[:, None] * col_scale[None, :]
    rot = np.eye(d)
    rot[:3, :3] = _rotation(cfg.remix_deg, rng)
    remixed = rng.random(n) < cfg.remix_fraction
    a, b = cfg.states
    gain, offset, remix = {}, {}, {}
    for sign, s in ((0.5, a), (-0.5, b)):
        gain[s] = np.exp(rng.normal(sign * cfg.gain_shift, cfg.gain_sigma, n))
        offset[s] = rng.normal(sign * cfg.offset_shift, cfg.offset_sigma, n)
        remix[s] = rng.standard_normal((n, d)) * (cfg.private_scale * scale / np.sqrt(d))[:, None]
    remix[b] += np.where(remixed[:, None], loadings @ rot - loadings, 0.0)
    return dict(baseline_hz=baseline, loadings=loadings.astype(np.float32), state_gain=gain, state_offset=offset,
                state_remix={s: v.astype(np.float32) for s, v in remix.items()}, remixed=remixed)


def _rotation(deg: float, rng: np.random.Generator) -> np.ndarray:
    """(3, 3) rotation by ``deg`` about a random axis."""
    axis = special_ortho_group.rvs(3, random_state=rng)[:, 0]
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    th = np.deg2rad(deg)
    return np.eye(3) + np.sin(th) * k + (1 - np.cos(th)) * k @ k


def _rates(p: dict, z: np.ndarray, in_state: dict, i: int) -> np.ndarray:
    """(T,) true rate (Hz) of unit ``i`` on the latent grid (the module docstring's equation)."""
    rate = np.empty(len(z))
    for s, m in in_state.items():
        x = z[m] @ (p["loadings"][i] + p["state_remix"][s][i]).astype(np.float64) + p["state_offset"][s][i]
        rate[m] = p["baseline_hz"][i] * p["state_gain"][s][i] * np.logaddexp(0.0, x) / np.log(2)
    return rate


def _running(cfg: GenericConfig, z: np.ndarray, state_of_bin: np.ndarray, rng: np.random.Generator) -> BehaviorSeries:
    """Running speed at 60 Hz: a function of the latent in the first state, unrelated in the second."""
    grid = np.arange(len(z)) * LATENT_DT
    ts = np.arange(0.0, grid[-1], 1 / RUNNING_HZ)
    zx = np.interp(ts, grid, z[:, 0])
    engaged = np.interp(ts, grid, (state_of_bin == 0).astype(float)) > 0.5
    slow = ar1(len(ts), 10.0, 1 / RUNNING_HZ, rng)
    noise = ar1(len(ts), 0.2, 1 / RUNNING_HZ, rng)
    speed = np.where(engaged, 18.0 + 8.0 * np.tanh(zx) + 1.5 * noise, 2.0 + 1.5 * np.abs(slow) + 0.5 * noise)
    return BehaviorSeries(timestamps=ts, data=speed, unit="cm/s")


# ------------------------------------------------------------------------------------------------ public
def simulate_generic(seed: int = 0, n_units: int | None = None, minutes: float | None = None, **overrides) -> Session:
    """An in-memory generic two-state :class:`Session` with ground truth (see the module docstring)."""
    cfg = generic_config(n_units, minutes, **overrides)
    if int(seed) < 0:
        raise InputError("seed", f"must be a non-negative integer, got {seed}")
    state_rng, lat_rng, unit_rng, beh_rng = (np.random.default_rng(s) for s in np.random.SeedSequence([seed, 15]).spawn(4))
    t_end = cfg.minutes * 60.0
    n = int(np.ceil(t_end / LATENT_DT))
    epochs = _state_blocks(cfg, t_end, state_rng)
    z = _latents(cfg, n, lat_rng)
    grid = np.arange(n) * LATENT_DT
    block = np.searchsorted(epochs.start_time.to_numpy(), grid, side="right") - 1
    state_of_bin = np.asarray([cfg.states.index(s) for s in epochs.state])[block]
    in_state = {s: state_of_bin == k for k, s in enumerate(cfg.states)}
    p = _code(cfg, z.shape[1], unit_rng)
    ids = np.arange(cfg.n_units, dtype=np.int64) + 1000
    trains, metrics = [], np.zeros((cfg.n_units, 3))
    for i in range(cfg.n_units):
        t = poisson_refractory(_rates(p, z, in_state, i), LATENT_DT, 0.0, cfg.refractory_s,
                               int(np.random.default_rng([seed, 7919, i]).integers(2**31 - 1)))
        t = t[t < t_end]
        trains.append(t)
        metrics[i] = (isi_violations(t, 0.0, t_end)[0], presence_ratio(t, 0.0, t_end), firing_rate(t, 0.0, t_end))
    area = np.where(np.arange(cfg.n_units) % 3 == 2, "TH", "CTX")
    units = pd.DataFrame(dict(
        area=area, probe="probe0", peak_channel_id=np.arange(cfg.n_units, dtype=np.int64),
        cell_type="rs", quality="good", amplitude_cutoff=0.01, snr=3.0,
        isi_violations=metrics[:, 0], presence_ratio=metrics[:, 1], firing_rate=metrics[:, 2],
    ), index=pd.Index(ids, name="unit_id"))
    gt_arrays = {k: p[k] for k in ("baseline_hz", "loadings", "state_gain", "state_offset", "state_remix")}
    gt_arrays["latents"] = z
    gt = GroundTruth(gt_arrays.__getitem__, latent_dt=LATENT_DT, latent_t0=0.0, n_latents=z.shape[1], unit_ids=ids)
    names = list(LORENZ_NAMES) + (["drift"] if z.shape[1] > 3 else [])
    return Session(
        session_id=f"sim-{PRESET}-seed{seed}", units=units, spikes=InMemorySpikes(SpikeTrains.from_list(ids, trains)),
        epochs=epochs, behavior={"running_speed": _running(cfg, z, state_of_bin, beh_rng)}, ground_truth=gt,
        metadata=dict(session_description=f"neurojepa simulated generic two-state recording (seed {seed})",
                      simulator=dataclasses.asdict(cfg), seed=seed, latent_names=names, epochs_table=STATES_TABLE),
    )
