"""Scoring latents on held-out time blocks: the ``"teacher"`` section of metrics.json.

:func:`score_latents` applies the same metrics to any per-bin latent array (the teacher's or a baseline's), so
the numbers beside each other come from the same splits and code. :func:`evaluate_teacher` adds what only a
predictive model has (``forecast_r2``) and puts the baselines beside the teacher.

Splits: ``train`` bins fit every read-out (ridge, GLM, logistic regression), ``test`` bins score it.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ..data.dataset import BinnedSession
from ..metrics.cobps import cobps as cobps_score
from ..metrics.cobps import cobps_cross_state, cobps_per_group, fit_pool, group_glms
from ..metrics.decoding import behaviour_decoding, compare_states, decoding_report
from ..metrics.latent import (cross_state_r2, forecast_r2_blocks, forecast_r2_cross_state, forecast_readout_r2,
                              linear_count_forecast_r2, per_dim_std, predicted_count_forecast_r2, rankme, ridge_r2)
from ..metrics.rows import ColumnView, block_rows
from .baselines import baseline_latents, holds_smoothed
from .sigreg import sigreg_statistic

log = logging.getLogger(__name__)


def score_latents(z, ctx: dict, *, collapse: bool = True) -> dict:
    """All array metrics of per-bin latents z: (n_bins, D), an array or a row source (metrics/rows.py), on the
    session context ``ctx`` (see :func:`session_context`): rankme, embed_dim, per-dimension std, sigreg on
    held-out, gt_r2 (+ per-dim), gt_r2_cross_state, cobps, decoding. Memory: one block of rows at a time.

    With ``ctx["train_states"]`` non-empty, every read-out is fit on the train blocks of those states; gt_r2,
    cobps, collapse metrics and "within" decoding are scored on their test blocks, gt_r2_cross_state and "cross"
    decoding on the test blocks of ``ctx["test_states"]`` (empty: all states)."""
    t0 = time.perf_counter()
    split, test, train, val = ctx["split"], ctx["split"] == "test", ctx["split"] == "train", ctx["split"] == "val"
    tr_states, te_states = ctx.get("train_states") or [], ctx.get("test_states") or []
    if tr_states:  # "within" = train, val and test blocks of the training states only
        keep = np.isin(ctx["state"], tr_states)
        train, test, val = train & keep, test & keep, val & keep
    out: dict = {}
    if collapse:
        out.update(rankme=rankme(z, rows=test), embed_dim=int(z.shape[1]), per_dim_std=per_dim_std(z, test).tolist(),
                   sigreg_heldout=sigreg_statistic(z, rows=np.flatnonzero(test)))
    if ctx.get("gt") is not None:
        r2, dims = ridge_r2(z, ctx["gt"], train, test, per_dim=True)
        out.update(gt_r2=r2, gt_r2_per_dim=dims.tolist())
        if tr_states:  # fit on the training states' train blocks, scored on the test states' test blocks
            cross_te = (split == "test") & (np.isin(ctx["state"], te_states) if te_states else True)
            cross = {"mean": ridge_r2(z, ctx["gt"], train, cross_te)} if cross_te.sum() > 1 else {}
            if cross:
                cross["+".join(tr_states) + "->" + ("+".join(te_states) or "all")] = cross["mean"]
        else:
            cross = cross_state_r2(z, ctx["gt"], ctx["state"], split, ctx["compare_states"])
        if cross:
            out.update(gt_r2_cross_state=cross["mean"], gt_r2_cross_state_pairs=cross)
    if ctx.get("heldout_counts") is not None and ctx["heldout_counts"].shape[1] > 0:
        y = ctx["heldout_counts"]
        # the pooled and per-state GLMs are independent fits: side by side on short sessions (ctx["glm_workers"])
        with fit_pool(ctx.get("glm_workers", 1) if isinstance(z, np.ndarray) else 1) as pool:
            pooled = pool.submit(cobps_score, z, y, train, test, val) if pool else None
            glms = None
            if len(np.unique(ctx["state"][test])) > 1:  # one GLM per state as well (metrics/cobps.py says why)
                glms = group_glms(z, y, train, test, ctx["state"], val, pool=pool)  # fit once, used twice
            out["cobps"] = pooled.result() if pool else cobps_score(z, y, train, test, val)
        if glms is not None:
            out["cobps_per_state"] = cobps_per_group(z, y, train, test, ctx["state"], glms=glms)
        out.update(cross_state_keys("cobps", _cobps_cross(z, ctx, train, glms)))
    if ctx.get("labels") is not None:
        out["decoding"] = decoding_report(z, ctx["labels"], split, ctx["bin_size"], ctx["flash_window_ms"],
                                          train_states=tr_states, test_states=te_states)
        beh = behaviour_decoding(z, ctx["labels"], split, ctx["bin_size"], train_states=tr_states,
                                 test_states=te_states)
        if beh:
            out["decoding"]["behaviour"] = beh
    out["eval_seconds"] = round(time.perf_counter() - t0, 2)
    return out


def cross_state_keys(name: str, cross_within: tuple[dict, dict]) -> dict:
    """``{name}_cross_state`` (mean over ordered pairs), ``{name}_cross_state_pairs`` ({"A->B": ..., "mean"}),
    ``{name}_within_state`` (mean) and ``{name}_within_state_per_state`` ({"B": ..., "mean"}), where present."""
    cross, within = cross_within
    out = {f"{name}_cross_state": cross["mean"], f"{name}_cross_state_pairs": cross} if cross else {}
    if cross and within:
        out.update({f"{name}_within_state": within["mean"], f"{name}_within_state_per_state": within})
    return out


def _transfer_masks(ctx: dict, train: np.ndarray) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """With ``ctx["train_states"]``: (pair name "A+B->C", fit rows = ``train``, cross-state score rows = test
    blocks of the test states (empty: all), within-state fit rows = train blocks of the test states)."""
    tr_states, te_states = ctx["train_states"], ctx.get("test_states") or []
    in_te = _in_test_states(ctx)
    name = "+".join(tr_states) + "->" + ("+".join(te_states) or "all")
    return name, train, (ctx["split"] == "test") & in_te, (ctx["split"] == "train") & in_te


def _in_test_states(ctx: dict) -> np.ndarray:
    te_states = ctx.get("test_states") or []
    return np.isin(ctx["state"], te_states) if te_states else np.ones(len(ctx["state"]), bool)


def _pair(name: str, cross: float, within: float) -> tuple[dict, dict]:
    """(cross, within) dicts of one fit -> score pair, as the pairwise cross-state metrics return them."""
    target = name.split("->")[1]
    return ({name: cross, "mean": cross}, {target: within, "mean": within}) if np.isfinite(cross) else ({}, {})


def _cobps_cross(z, ctx: dict, train: np.ndarray, glms: dict | None = None) -> tuple[dict, dict]:
    """cobps across states: every ordered pair of ``compare_states`` (metrics/cobps.py ``cobps_cross_state``), or
    with train_states, fit on their train blocks and scored on the test states' test blocks."""
    y = ctx["heldout_counts"]
    if not ctx.get("train_states"):
        return cobps_cross_state(z, y, ctx["state"], ctx["split"], ctx["compare_states"], glms=glms)
    name, fit, score, fit_within = _transfer_masks(ctx, train)
    if score.sum() < 2 or fit_within.sum() <= z.shape[1]:
        return {}, {}
    val = ctx["split"] == "val"  # each GLM's penalty is chosen on the val blocks of the states it is fit on
    fit_val, within_val = val & np.isin(ctx["state"], ctx["train_states"]), val & _in_test_states(ctx)
    return _pair(name, cobps_score(z, y, fit, score, fit_val), cobps_score(z, y, fit_within, score, within_val))


def forecast_cross(net, z: np.ndarray, session, ctx: dict) -> tuple[dict, dict]:
    """forecast_r2 across states (metrics/latent.py ``forecast_r2_cross_state``): a linear forecast read-out of
    the latent over the predictor's horizon, fit on one state's train segments, scored on another's test segments
    (with train_states: fit on their train segments, scored on the test states' test segments)."""
    k = net.horizon
    origins = np.zeros(len(z), bool)
    for part in ("train", "test"):
        for a, b in session.segments(part):
            origins[a:max(a, b - k)] = True
    if not ctx.get("train_states"):
        return forecast_r2_cross_state(z, k, origins, ctx["state"], ctx["split"], ctx["compare_states"])
    train = (ctx["split"] == "train") & np.isin(ctx["state"], ctx["train_states"])
    name, fit, score, fit_within = _transfer_masks(ctx, train)
    return _pair(name, forecast_readout_r2(z, k, origins & fit, origins & score),
                 forecast_readout_r2(z, k, origins & fit_within, origins & score))


def session_context(session: BinnedSession, counts: np.ndarray, heldout: np.ndarray, flash_window_ms: float,
                    train_states: list[str] | None = None, test_states: list[str] | None = None) -> dict:
    """The arrays every scorer needs, pulled once from a prepared session (or anything with its attributes).
    flash_window_ms: the decoding window (``eval.flash_window_ms``); train_states / test_states: see
    :func:`score_latents` (empty or None: all states)."""
    labels = session.labels
    state = labels["state"].to_numpy().astype(str) if labels is not None else np.full(session.n_bins, "all")
    return dict(split=np.asarray(session.split).astype(str), state=state, compare_states=compare_states(state),
                gt=session.gt_latents, labels=labels, bin_size=float(session.bin_size),
                heldout_counts=ColumnView(counts, heldout), flash_window_ms=flash_window_ms,
                train_states=list(train_states or []), test_states=list(test_states or []))


def forecast_origins(session, part: str, k: int) -> np.ndarray:
    """Rows t of ``part``'s segments whose next k bins lie in the same segment (forecast origins)."""
    rows = [np.arange(a, b - k) for a, b in session.segments(part) if b - a > k]
    return np.concatenate(rows) if rows else np.zeros(0, int)


def _predict(net):
    """z rows (n, D) -> the predictor's z_{t+1..t+K} (n, K, D), as numpy."""
    def forecast(zb: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net.predict(torch.as_tensor(zb, dtype=torch.float32)[None])[0, :, 1:].numpy()
    return forecast


def forecast_score(net, z: np.ndarray, session) -> float:
    """``forecast_r2_latent`` on test segments: the predictor's z_{t+1..t+K} from z_t against the encoder's actual
    ones (a block of rows at a time: (rows, K, D) float64 of ``metrics.rows.BLOCK_BYTES``). Self-referential (a
    slow, uninformative latent forecasts itself well), hence ``forecast_r2`` in counts."""
    k = net.horizon
    block = block_rows(k * z.shape[1])
    rows = forecast_origins(session, "test", k)
    if len(rows) == 0:
        return float("nan")
    forecast = _predict(net)

    def blocks():
        for i in range(0, len(rows), block):
            r = rows[i:i + block]
            yield forecast(z[r]), np.stack([z[r + j + 1] for j in range(k)], axis=1)  # (n, K, D) each

    return forecast_r2_blocks(blocks())


def evaluate_teacher(net, z: np.ndarray, session, counts: np.ndarray, heldin: np.ndarray, heldout: np.ndarray,
                     cfg, train_states: list[str] | None = None, test_states: list[str] | None = None) -> dict:
    """The ``"teacher"`` metrics section: teacher scores at top level, baselines under ``"baselines"``."""
    ctx = session_context(session, counts, heldout, cfg.eval.flash_window_ms, train_states, test_states)
    # co-smoothing's pooled and per-state GLM fits side by side (2 at a time) where their memory is small: a short
    # session, whose smoothed counts are held in memory (baselines.py); evaluation 225 s -> 86 s on 2 cores, same scores
    ctx["glm_workers"] = min(2, torch.get_num_threads()) if holds_smoothed(counts.shape[0], len(heldin)) else 1
    out = score_latents(z, ctx)
    t0 = time.perf_counter()
    held_in = ColumnView(counts, heldin)
    k = net.horizon
    origins = forecast_origins(session, "train", k), forecast_origins(session, "test", k)  # (fit, score) rows
    # forecast_r2: the predictor's z_{t+1..t+K} read out to the held-in counts by a ridge map fit on its train
    # forecasts, against the mean-rate forecast (metrics/latent.py; 0 = no better than each unit's mean rate)
    out["forecast_r2"] = predicted_count_forecast_r2(z, held_in, k, _predict(net), *origins)
    out["forecast_r2_readout"] = linear_count_forecast_r2(z, held_in, k, *origins)  # the baselines' forecast
    out["forecast_r2_latent"] = forecast_score(net, z, session)
    out.update(cross_state_keys("forecast_r2", forecast_cross(net, z, session, ctx)))
    out["eval_seconds"] = round(out["eval_seconds"] + time.perf_counter() - t0, 2)
    out["n_heldin_units"], out["n_heldout_units"] = int(len(heldin)), int(len(heldout))
    if cfg.eval.baselines:
        fit = (ctx["split"] == "train") & (np.isin(ctx["state"], train_states) if train_states else True)
        base = baseline_latents(held_in, fit, ctx["bin_size"], z.shape[1],
                                cfg.eval.smooth_ms, cfg.train.seed, with_cebra=cfg.eval.cebra)
        out["baselines"] = {}
        for name, feats in base.items():
            if name == "fa":  # the classical latent model: ground truth and co-smoothing, no decoding
                out["baselines"][name] = score_latents(feats, {k: v for k, v in ctx.items() if k != "labels"},
                                                       collapse=False)
            else:
                out["baselines"][name] = score_latents(feats, ctx)
            t0 = time.perf_counter()  # no predictor: a linear forecast read-out of the counts (same target, null)
            out["baselines"][name]["forecast_r2"] = linear_count_forecast_r2(feats, held_in, k, *origins)
            out["baselines"][name]["eval_seconds"] += round(time.perf_counter() - t0, 2)
    return out
