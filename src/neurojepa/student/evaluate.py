"""Scoring a trained student on held-out time blocks: the ``"student"`` section of metrics.json.

* Readout for every bin: the whole session is run causally in chunks of ``eval_chunk`` bins, each preceded by
  ``eval_warmup`` bins of its own past input (state warm-up, discarded: long enough for the slowest readout filter,
  so every scored bin sees a network that has been running), batched over chunks; bins before ``burn_in`` are left
  out of the scores.
* ``cca_heldout``: CCA directions fit on the train blocks (student readout vs teacher latents), correlations of each
  canonical pair on the test blocks; ``cca_null_mean``: the same against circularly time-shifted teacher latents.
* Firing statistics on held-out (test) chunks (:func:`firing_summary`): rates (Hz; medians of all, E and I neurons
  and ``rate_ratio_inh_exc``), fraction in the homeostatic band (``rate_low_hz`` to
  ``rate_high_hz``, written beside it as ``rate_band_hz``, which the report draws), CV of ISI, Fano factor
  (100 ms windows), silent/saturated counts, Dale violations, and the E/I input-current correlation per neuron.
* Decoding of the teacher's tasks from the student readout, with its ratio to the teacher's (balanced accuracy),
  over the teacher's flash window (recorded in its decoding results), so the ratio compares like with like;
  ``decoding["behaviour"]``: ridge decoding of continuous behaviour within and across states
  (``metrics.decoding.behaviour_decoding``, as the teacher's).
* With two or more states (the teacher's ``compare_states``): ``cca_cross_state`` (``cca_cross_state_pairs``
  {"A->B", ..., "mean"}): CCA directions fit on state A's train blocks, mean correlation on state B's test blocks;
  ``cca_cross_state_null``: the same against circularly time-shifted teacher latents; ``firing_by_state``
  {state: {rate_hz_median(_exc/_inh), frac_in_band, cv_isi_median, lv_median, frac_isi_below_5ms, fano_median,
  n_silent, n_saturated, ei_current_corr_median, n_chunks, seconds}}: the firing statistics' held-out chunks grouped
  by their bins' state (chunks straddling two states are left out; no extra simulation: the currents' 8 chunks are
  spread over states).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..errors import InputError
from ..metrics import spiking
from ..metrics.cca import cca_cross_state, circular_shift, heldout_cca, null_heldout_cca
from ..metrics.decoding import behaviour_decoding, compare_states, decoding_report
from .config import StudentConfig
from .dale import dale_violations, neuron_signs
from .network import StudentNet

log = logging.getLogger(__name__)


def chunk_inputs(counts: np.ndarray, starts: np.ndarray, chunk: int, warmup: int) -> np.ndarray:
    """Rows [s - warmup, s + chunk) of counts (n_bins, n_in) for each start s, zero-padded at the session's ends,
    (len(starts), warmup + chunk, n_in) float32: the causal evaluation chunks."""
    n_bins = len(counts)
    x = np.zeros((len(starts), warmup + chunk, counts.shape[1]), np.float32)
    for i, s in enumerate(starts):
        a, b = max(s - warmup, 0), min(s + chunk, n_bins)
        x[i, a - (s - warmup): b - (s - warmup)] = counts[a:b]
    return x


def _run_chunks(net: StudentNet, counts: np.ndarray, starts: np.ndarray, chunk: int, warmup: int,
                record_currents: bool = False) -> dict[str, np.ndarray]:
    """Simulate chunks [s - warmup, s + chunk) (zero-padded at the ends) in one batch; returns readout
    (B, chunk, D), the readout's input features (B, chunk, K * n_exc) and spikes (B, chunk * substeps, N) uint8,
    without the warm-up (and the input currents if asked)."""
    res = net.simulate(torch.from_numpy(chunk_inputs(counts, starts, chunk, warmup)), record_currents=record_currents)
    k = warmup * net.substeps
    out = {"readout": res["readout"][:, warmup:].numpy(), "features": res["features"][:, warmup:].numpy(),
           "spikes": res["spikes"][k:].permute(1, 0, 2).numpy()}
    if record_currents:
        out["i_exc"] = res["i_exc"][k:].permute(1, 0, 2).numpy()
        out["i_inh"] = res["i_inh"][k:].permute(1, 0, 2).numpy()
    return out


def student_features(net: StudentNet, counts: np.ndarray, chunk: int, warmup: int,
                     batch: int = 64, rows: np.ndarray | None = None) -> np.ndarray:
    """The readout's input for every bin, (n_bins, K * n_exc) float32 (filtered E spike counts), from a causal
    chunked simulation of counts (n_bins, n_in); ``net.readout`` of it is the student's readout. ``rows``: keep
    only these bins' features (sorted indices; (len(rows), K * n_exc)), so a long session's are never held whole."""
    return _whole_session(net, counts, chunk, warmup, batch, ("features",), rows)["features"]


def _whole_session(net: StudentNet, counts: np.ndarray, chunk: int, warmup: int, batch: int,
                   keys: tuple[str, ...], rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every bin of counts (n_bins, n_in) simulated in causal chunks, ``batch`` chunks at a time; for each of
    ``keys`` (outputs of :func:`_run_chunks`) its rows in time order, (n_bins * rows per bin, width), or with
    ``rows`` (sorted bin indices; keys with one row per bin only) just those bins' rows."""
    n_bins = len(counts)
    starts = np.arange(0, n_bins, chunk)
    out: dict[str, np.ndarray] = {}
    for i in range(0, len(starts), batch):
        s = starts[i:i + batch]
        res = _run_chunks(net, counts, s, chunk, warmup)
        for k in keys:
            v = res[k]
            per = v.shape[1] // chunk  # rows per bin: 1, or the sub-steps of spikes
            if rows is not None:  # only the requested bins of this batch's span
                lo, hi = np.searchsorted(rows, [s[0], s[0] + len(s) * chunk])
                if k not in out:
                    out[k] = np.zeros((len(rows), v.shape[-1]), v.dtype)
                out[k][lo:hi] = v.reshape(-1, v.shape[-1])[rows[lo:hi] - s[0]]
                continue
            if k not in out:
                out[k] = np.zeros((len(starts) * chunk * per, v.shape[-1]), v.dtype)
            out[k][s[0] * per: (s[0] + len(s) * chunk) * per] = v.reshape(-1, v.shape[-1])
    if rows is not None:
        return out
    return {k: v[: n_bins * (len(v) // (len(starts) * chunk))] for k, v in out.items()}


def simulate_chunked(net: StudentNet, counts: np.ndarray, chunk: int, warmup: int,
                     batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The student driven by counts (n_bins, n_in) the way evaluation drives it: causal chunks of ``chunk`` bins,
    each warmed up on its own ``warmup`` bins of past input. Returns spikes (n_bins * substeps, N) uint8, one row
    per ``dt`` step (E neurons first), and the readout (n_bins, D) float32."""
    res = _whole_session(net, counts, chunk, warmup, batch, ("spikes", "readout"))
    return res["spikes"], res["readout"]


@torch.no_grad()
def apply_readout(net: StudentNet, features: np.ndarray, block: int = 50_000) -> np.ndarray:
    """net.readout of features (n_bins, K * n_exc) -> (n_bins, D) float32, in blocks of rows."""
    return np.concatenate([net.readout(torch.from_numpy(features[i:i + block])).numpy()
                           for i in range(0, len(features), block)]) if len(features) else np.zeros((0, net.n_out))


def student_readout(net: StudentNet, counts: np.ndarray, chunk: int, warmup: int,
                    batch: int = 64) -> np.ndarray:
    """Readout (n_bins, D) float32 for every bin of counts (n_bins, n_in), causal (chunked with warm-up); the
    simulation keeps only the readout of each chunk (memory: (n_bins, D), whatever the network's width)."""
    return _whole_session(net, counts, chunk, warmup, batch, ("readout",))["readout"]


def _current_chunks(starts: np.ndarray, chunk: int, state: np.ndarray | None, n: int = 8) -> np.ndarray:
    """Indices (into starts) of the chunks whose E and I input currents are recorded: the first ``n``, or with
    states, up to ``n`` spread evenly over the states of the single-state chunks (at least 2 per state), so that
    every state's E/I current correlation is measured."""
    if state is None:
        return np.arange(min(n, len(starts)))
    cs = _chunk_states(starts, chunk, state)
    groups = [np.flatnonzero(cs == st) for st in sorted(set(cs) - {""})]
    if len(groups) < 2:
        return np.arange(min(n, len(starts)))
    per = max(2, n // len(groups))
    return np.sort(np.concatenate([g[:per] for g in groups]))


def _chunk_states(starts: np.ndarray, chunk: int, state: np.ndarray) -> np.ndarray:
    """The state of each chunk [s, s + chunk), or "" when its bins are not all of one state."""
    state = np.asarray(state).astype(str)
    return np.array([state[s] if (state[s:s + chunk] == state[s]).all() else "" for s in starts])


def _nan_median(a) -> float:
    a = np.asarray(a, float)
    return float(np.nanmedian(a)) if np.isfinite(a).any() else float("nan")


def firing_summary(spikes: np.ndarray, n_exc: int, cfg: StudentConfig, i_exc: np.ndarray | None = None,
                   i_inh: np.ndarray | None = None) -> dict:
    """The firing statistics of spikes (chunks, steps, N) (E neurons first): rate medians (all, E, I; Hz), fraction
    in the band, CV of ISI, LV, Fano factor (100 ms windows), silent/saturated counts and, with the chunks' input
    currents (chunks', steps, N), the median per-neuron E/I current correlation."""
    r = spiking.rate_hz(spikes, cfg.dt)
    silent, saturated = spiking.silent_saturated(r, cfg.silent_below_hz, cfg.saturated_above_hz)
    out = dict(rate_hz_median=float(np.median(r)), rate_hz_median_exc=float(np.median(r[:n_exc])),
               rate_hz_median_inh=float(np.median(r[n_exc:])) if len(r) > n_exc else float("nan"),
               frac_in_band=spiking.frac_in_band(r, cfg.rate_low_hz, cfg.rate_high_hz),
               cv_isi_median=_nan_median(spiking.cv_isi(spikes)),
               lv_median=_nan_median(spiking.lv_isi(spikes)),  # local variation: irregularity without slow modulation
               frac_isi_below_5ms=spiking.short_isi_fraction(spikes, int(round(0.005 / cfg.dt))),  # doublets
               fano_median=_nan_median(spiking.fano_factor(spikes, int(round(0.1 / cfg.dt)))),
               n_silent=silent, n_saturated=saturated)
    if i_exc is not None and i_inh is not None and len(i_exc):
        out["ei_current_corr_median"] = _nan_median(spiking.ei_current_correlation(i_exc, i_inh))
    return out


def firing_statistics(net: StudentNet, counts: np.ndarray, test_mask: np.ndarray, cfg: StudentConfig,
                      record: dict | None = None, state: np.ndarray | None = None) -> dict:
    """Firing statistics of the student on up to ``cfg.eval_spike_chunks`` chunks lying wholly in test bins.
    ``record``: a dict that receives those chunks' ``spikes`` (B, eval_chunk * substeps, N) uint8 and
    ``chunk_start_bin`` (B,) (what distill saves as spikes.npz). ``state`` (n_bins,) str: adds ``firing_by_state``
    (:func:`firing_by_state`) when the chunks cover two or more states."""
    chunk = cfg.eval_chunk
    ok = np.concatenate([[0], np.cumsum(test_mask)])
    starts = np.arange(0, len(counts) - chunk + 1, chunk)
    starts = starts[(ok[starts + chunk] - ok[starts]) == chunk]
    if len(starts) == 0:
        return {}
    starts = starts[np.linspace(0, len(starts) - 1, min(cfg.eval_spike_chunks, len(starts))).astype(int)]
    spikes = _run_chunks(net, counts, starts, chunk, cfg.eval_warmup)["spikes"]
    if record is not None:
        record.update(spikes=spikes, chunk_start_bin=starts)
    cur_idx = _current_chunks(starts, chunk, state)
    cur = _run_chunks(net, counts, starts[cur_idx], chunk, cfg.eval_warmup, record_currents=True)
    ne = net.n_exc
    summary = firing_summary(spikes, ne, cfg, cur["i_exc"], cur["i_inh"])
    r = spiking.rate_hz(spikes, cfg.dt)
    cvs = spiking.cv_isi(spikes)
    # what the report draws and only this simulation knows (keys: student.report_data.REPORT_DATA_KEYS)
    t_show = min(spikes.shape[1], int(round(1.0 / cfg.dt)))  # 1 s of the first held-out chunk
    rng = np.random.default_rng(cfg.seed)
    show_e = np.sort(rng.choice(ne, min(ne, 60), replace=False))
    show_i = ne + np.sort(rng.choice(net.n_inh, min(net.n_inh, 20), replace=False))
    w = net.rec.weight.detach().cpu().numpy()
    report = dict(raster_t=np.arange(t_show) * cfg.dt, raster_exc=spikes[0][:t_show][:, show_e].astype(bool),
                  raster_inh=spikes[0][:t_show][:, show_i].astype(bool), rates_hz=r.astype(np.float64),
                  is_exc=np.arange(net.n_exc + net.n_inh) < ne, cv_isi=np.asarray(cvs, np.float64), w_rec=w)
    by_state = (firing_by_state(spikes, starts, chunk, state, cfg, n_exc=ne,
                                currents=(cur_idx, cur["i_exc"], cur["i_inh"])) if state is not None else {})
    rE, rI = summary["rate_hz_median_exc"], summary["rate_hz_median_inh"]
    return dict(_report=report, **summary, rate_band_hz=[float(cfg.rate_low_hz), float(cfg.rate_high_hz)],
                rate_ratio_inh_exc=float(rI / rE) if rE > 0 else float("nan"),
                firing_seconds=float(spikes.shape[0] * spikes.shape[1] * cfg.dt),
                **({"firing_by_state": by_state} if len(by_state) > 1 else {}))


def firing_by_state(spikes: np.ndarray, starts: np.ndarray, chunk: int, state: np.ndarray,
                    cfg: StudentConfig, n_exc: int | None = None, currents: tuple | None = None) -> dict:
    """{state: {...}} of the held-out chunks (spikes (B, steps, N), chunk b covering bins [starts[b], starts[b] +
    chunk)) grouped by the state of their bins; a chunk whose bins are not all of one (non-empty) state is left
    out. Per state: the statistics of :func:`firing_summary` (rate medians of all, E (the first ``n_exc``; all
    neurons when None) and I neurons, fraction in band, CV of ISI, LV, Fano factor, silent/saturated) plus
    ``n_chunks`` and ``seconds``; with ``currents`` = (chunk indices into starts, i_exc, i_inh (len(indices),
    steps, N)), also ``ei_current_corr_median`` over that state's recorded chunks."""
    chunk_state = _chunk_states(starts, chunk, state)
    ne = spikes.shape[2] if n_exc is None else int(n_exc)
    out = {}
    for st in sorted(set(chunk_state) - {""}):
        sel = chunk_state == st
        sp = spikes[sel]
        ie = ii = None
        if currents is not None:
            idx, i_exc, i_inh = currents
            mine = sel[np.asarray(idx, int)]
            ie, ii = i_exc[mine], i_inh[mine]
        summary = firing_summary(sp, ne, cfg, ie, ii)
        if ne >= spikes.shape[2]:  # no I neurons named: no E/I split
            summary.pop("rate_hz_median_exc"), summary.pop("rate_hz_median_inh")
        out[str(st)] = dict(**summary, n_chunks=int(len(sp)), seconds=float(sp.shape[0] * sp.shape[1] * cfg.dt))
    return out


def count_dale_violations(net: StudentNet) -> int:
    """Weights whose sign contradicts the presynaptic type: inputs and readout must be >= 0 (E afferents, E-only
    readout), recurrent columns follow the E/I sign."""
    w_in, w_out = net.inp.weight, net.readout.weight
    return (dale_violations(w_in, torch.ones(w_in.shape[1])) + dale_violations(w_out, torch.ones(w_out.shape[1]))
            + dale_violations(net.rec.weight, neuron_signs(net.n_exc, net.n_inh)))


def _decoding_ratio(student: dict, teacher: dict) -> dict:
    """Ratios of balanced accuracy, student / teacher, for every within-state task both have."""
    ratios = {}
    for state, tasks in (student.get("within") or {}).items():
        for task, res in tasks.items():
            t = ((teacher.get("within") or {}).get(state) or {}).get(task) or {}
            s_acc, t_acc = res.get("balanced_accuracy"), t.get("balanced_accuracy")
            if s_acc is not None and t_acc and np.isfinite(s_acc) and np.isfinite(t_acc):
                ratios[f"{state}/{task}"] = float(s_acc / t_acc)
    return ratios


def decoding_window_ms(flash_window_ms: float | None, teacher_decoding: dict | None) -> float | None:
    """The flash window of the student's decoding: the one the teacher's decoding used (its results record it as
    ``flash_window_ms``), so that the student/teacher ratio compares the same features. An explicit
    ``flash_window_ms`` must agree with it; None when neither is known."""
    recorded = (teacher_decoding or {}).get("flash_window_ms")
    if flash_window_ms is None:
        return None if recorded is None else float(recorded)
    if recorded is not None and abs(float(recorded) - flash_window_ms) > 1e-9:
        raise InputError("flash_window_ms", f"{flash_window_ms:g} ms differs from the {float(recorded):g} ms window of "
                                            "the teacher's decoding: the decoding ratio would compare different windows")
    return float(flash_window_ms)


def _has_flashes(labels) -> bool:
    return "time_since_flash" in labels and bool(labels["time_since_flash"].notna().any())


def train_mask(split: np.ndarray, state: np.ndarray | None, train_states, burn_in: int) -> np.ndarray:
    """(n_bins,) bool: the bins whose readout the CCA directions (and the readout refit) are fit on: train blocks
    of train_states (all when empty), after the first burn_in bins of the session."""
    split = np.asarray(split).astype(str)
    return (np.arange(len(split)) >= burn_in) & (split == "train") & _in_states(state, train_states, len(split))


def _in_states(state: np.ndarray | None, states, n: int) -> np.ndarray:
    if not states or state is None:
        return np.ones(n, bool)
    return np.isin(np.asarray(state).astype(str), list(states))


def _cca_cross_state(z: np.ndarray, latents: np.ndarray, split: np.ndarray, state: np.ndarray, valid: np.ndarray,
                     cfg: StudentConfig, train_states=None, test_states=None) -> dict:
    """``cca_cross_state`` (mean over ordered state pairs), ``cca_cross_state_pairs`` and ``cca_cross_state_null``
    (against the teacher latents circularly shifted in time): directions fit on state A's train blocks (after the
    burn-in), correlations on state B's test blocks. Pairs: from train_states (default: the compared states) to
    test_states (default: the compared states)."""
    states = compare_states(state)
    sources, targets = list(train_states or states), list(test_states or states)
    train, test = valid & (split == "train"), valid & (split == "test")
    pairs = cca_cross_state(z, latents, state, train, test, cfg.ridge, sources, targets, min_rows=5 * z.shape[1])
    if not pairs:
        return {}
    shifted = circular_shift(latents, np.random.default_rng(cfg.seed))
    null = cca_cross_state(z, shifted, state, train, test, cfg.ridge, sources, targets, min_rows=5 * z.shape[1])
    return dict(cca_cross_state=pairs["mean"], cca_cross_state_pairs=pairs, cca_cross_state_null=null.get("mean"))


def evaluate_student(net: StudentNet, counts: np.ndarray, latents: np.ndarray, split: np.ndarray,
                     cfg: StudentConfig, labels=None, teacher_decoding: dict | None = None,
                     train_states=None, test_states=None, decode: bool = True,
                     readout: np.ndarray | None = None, spikes_out: dict | None = None,
                     flash_window_ms: float | None = None) -> tuple[dict, np.ndarray]:
    """All student metrics. counts: (n_bins, n_in), latents: (n_bins, D) teacher, split: (n_bins,) str.

    CCA directions are fit on train blocks of ``train_states`` and scored on test blocks of ``test_states`` (all
    states when empty; labels["state"] gives each bin's state). When they differ, ``cca_heldout_mean_within`` adds
    the score on test blocks of the training states. The firing statistics are those of test blocks of
    ``test_states``; ``firing_by_state`` covers the test blocks of every state (with ``test_states`` set, from a
    second set of held-out chunks), so a cross-state run reports firing in the trained and the unseen state.
    ``readout`` (n_bins, D): the student's readout when already computed (distill computes it for the readout
    refit), else simulated here. ``spikes_out``: a dict that receives the held-out spikes behind the firing
    statistics (see :func:`firing_statistics`). Decoding (``decode`` and
    labels with flashes) uses the teacher's flash window, read from ``teacher_decoding`` or given as
    ``flash_window_ms`` (:func:`decoding_window_ms`); an InputError when neither gives it.
    Returns (metrics dict, readout (n_bins, D) float32)."""
    net.eval()
    split = np.asarray(split).astype(str)
    state = labels["state"].to_numpy() if labels is not None and "state" in labels else None
    window = decoding_window_ms(flash_window_ms, teacher_decoding) if labels is not None and decode else None
    if labels is not None and decode and window is None and _has_flashes(labels):  # before minutes of simulation
        raise InputError("flash_window_ms", "the student's decoding needs the teacher's flash window: pass "
                                            "flash_window_ms (the teacher's eval.flash_window_ms) or the teacher's "
                                            "decoding metrics, which record it")
    z = student_readout(net, counts, cfg.eval_chunk, cfg.eval_warmup) if readout is None else readout
    tr = train_mask(split, state, train_states, cfg.burn_in)
    valid = np.arange(len(z)) >= cfg.burn_in
    te = valid & (split == "test") & _in_states(state, test_states, len(z))
    if tr.sum() < 5 * z.shape[1] or te.sum() < 5 * z.shape[1]:
        raise InputError("student evaluation", f"too few train ({tr.sum()}) or test ({te.sum()}) bins for "
                         "held-out CCA (check train_states/test_states)")
    cca = heldout_cca(z[tr], latents[tr], z[te], latents[te], cfg.ridge)
    null = null_heldout_cca(z[tr], latents[tr], z[te], latents[te], cfg.ridge, seed=cfg.seed)
    m = dict(cca_heldout=[float(c) for c in cca], cca_heldout_mean=float(np.mean(cca)),
             cca_null_mean=float(np.mean(null)), n_train_bins=int(tr.sum()), n_test_bins=int(te.sum()))
    if test_states and list(test_states) != list(train_states or []):
        within = valid & (split == "test") & _in_states(state, train_states, len(z))
        if within.sum() >= 5 * z.shape[1]:
            m["cca_heldout_mean_within"] = float(np.mean(heldout_cca(z[tr], latents[tr], z[within], latents[within],
                                                                     cfg.ridge)))
    if state is not None and len(compare_states(np.asarray(state).astype(str))) > 1:
        m.update(_cca_cross_state(z, latents, split, np.asarray(state).astype(str), valid, cfg, train_states,
                                  test_states))
    st = np.asarray(state).astype(str) if state is not None else None
    m.update(firing_statistics(net, counts, te, cfg, record=spikes_out, state=st))
    if st is not None and test_states and "firing_by_state" not in m:  # cross-state run: firing in every state
        every = firing_statistics(net, counts, valid & (split == "test"), cfg, state=st).get("firing_by_state")
        if every:
            m["firing_by_state"] = every
    report = m.pop("_report", None)
    if report is not None:
        report["cca_null"] = np.asarray(null, np.float64)
        m["_report"] = report  # popped by distill, written to report_data.npz
    m.update(dale_violations=count_dale_violations(net), n_exc=net.n_exc, n_inh=net.n_inh)
    if labels is not None and decode:
        dec = decoding_report(z, labels, split, net.bin_size, window) if window is not None else {}
        beh = behaviour_decoding(z, labels, split, net.bin_size, train_states, test_states, rows=valid)
        if beh:
            dec["behaviour"] = beh
        m["decoding"] = dec
        if teacher_decoding:
            ratios = _decoding_ratio(dec, teacher_decoding)
            m["decoding_ratio"] = ratios
            m["decoding_ratio_mean"] = float(np.mean(list(ratios.values()))) if ratios else None
            m["decoding_ratio_min"] = float(np.min(list(ratios.values()))) if ratios else None
    return m, z
