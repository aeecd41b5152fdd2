"""The report's figures: pure functions of plain arrays and dicts, each returning a matplotlib Figure.

Nothing here reads files or knows the run layout (that is :mod:`neurojepa.report.build`), so every figure can be
tested on crafted arrays. All figures use the Agg backend (no display) and are closed by the caller after encoding
(:func:`neurojepa.report.html.figure_img` does that).

Conventions: times in s, rates in Hz; a missing value (NaN/None) is drawn as a gap or a missing bar, never as 0.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

EXC_COLOR, INH_COLOR = "tab:red", "tab:blue"
_SERIES_COLORS = ["tab:purple", "tab:orange", "tab:green", "tab:gray", "tab:brown", "tab:cyan", "tab:olive"]


def _fig(w: float, h: float, ncols: int = 1, nrows: int = 1, **kw):
    fig, axes = plt.subplots(nrows, ncols, figsize=(w, h), layout="constrained", squeeze=False, **kw)
    return fig, axes.ravel()


def _raster(ax, t: np.ndarray, events: np.ndarray, color: str = "k", size: float = 2.0) -> None:
    """Ticks at every nonzero entry of events (T, n) against t (T,) s; row 0 on top."""
    ti, ui = np.nonzero(np.asarray(events))
    ax.scatter(np.asarray(t)[ti], ui, s=size, c=color, marker="|", linewidths=0.6 + 0.15 * size)
    ax.set_ylim(events.shape[1] - 0.5, -0.5)
    if len(t):
        ax.set_xlim(t[0], t[-1])


# ---------------------------------------------------------------------------------------------------- data
def state_rasters(windows: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """One raster per state. windows: {state: (t (T,) s bin left edges, counts (T, units))}; units in the order
    given (the caller sorts them, e.g. busiest first)."""
    n = max(1, len(windows))
    fig, axes = _fig(4.0 * n, 3.2, ncols=n)
    for ax, (state, (t, counts)) in zip(axes, windows.items()):
        _raster(ax, t, counts)
        ax.set(xlabel="time (s)", title=f"{state}: {counts.shape[1]} units")
    axes[0].set_ylabel("unit (busiest on top)")
    return fig


# ------------------------------------------------------------------------------------------------- teacher
def training_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str = "training") -> Figure:
    """Logged scalars against the training step, one panel per quantity with train and val together.

    curves: {"train_loss": (step (n,), value (n,)), "val_loss": ..., "train_reg": ...}; names without a
    train_/val_ prefix get their own panel.
    """
    panels: dict[str, list[str]] = {}
    for name in curves:
        base = name.split("_", 1)[1] if name.startswith(("train_", "val_")) else name
        panels.setdefault(base, []).append(name)
    panels = dict(sorted(panels.items(), key=lambda kv: kv[0] != "loss"))  # the total loss first
    n = max(1, len(panels))
    fig, axes = _fig(min(3.6 * n, 15), 2.9, ncols=n)
    for ax, (base, names) in zip(axes, panels.items()):
        for name in names:
            x, y = curves[name]
            style = dict(marker="o", ms=3) if name.startswith("val_") else dict(lw=1)
            ax.plot(x, y, label=name.split("_", 1)[0] if "_" in name else name, **style)
        ax.set(xlabel="step", title=base)
        ax.legend(frameon=False, fontsize=8)
    fig.suptitle(title)
    return fig


def collapse_diagnostics(per_dim_std: Sequence[float], rankme: float | None, embed_dim: int,
                         sigreg: float | None = None, baselines: Mapping[str, float] | None = None) -> Figure:
    """Left: per-dimension std of held-out latents (sorted; a collapsed dim sits at 0). Right: RankMe against
    embed_dim and the 0.5 * embed_dim target, with baselines' RankMe beside it. sigreg: held-out SIGReg statistic
    (in the title: small for a Gaussian-like cloud)."""
    fig, (a, b) = _fig(9.5, 3.2, ncols=2)
    std = np.sort(np.asarray(per_dim_std, dtype=float))[::-1]
    a.bar(np.arange(len(std)), std, color="tab:purple")
    a.set(xlabel="latent dimension (sorted)", ylabel="std (held-out)", title="per-dimension std")
    names = ["teacher"] + list(baselines or {})
    vals = [rankme] + list((baselines or {}).values())
    vals = [np.nan if v is None else float(v) for v in vals]
    b.bar(names, vals, color=["tab:purple"] + ["tab:gray"] * (len(names) - 1))
    b.axhline(embed_dim, color="k", lw=1, ls="-", label=f"embed_dim = {embed_dim}")
    b.axhline(0.5 * embed_dim, color="tab:red", lw=1, ls="--", label="target 0.5 x embed_dim")
    sig = "" if sigreg is None or not np.isfinite(sigreg) else f"; SIGReg held-out = {sigreg:.3g}"
    b.set(ylabel="RankMe", title=f"effective rank{sig}", ylim=(0, embed_dim * 1.4))
    b.legend(frameon=False, fontsize=8, loc="upper right", ncols=2)
    return fig


def latent_trajectories(t: np.ndarray, true: np.ndarray, mapped: np.ndarray, r2: Sequence[float] | None = None,
                        true_label: str = "ground truth", mapped_label: str = "teacher (ridge-mapped)",
                        title: str = "") -> Figure:
    """Stacked panels, one per dimension: true (T, k) and linearly mapped (T, k) traces against t (T,) s.
    r2: optional (k,) held-out R^2 per dimension, shown in each panel's title."""
    k = true.shape[1]
    fig, axes = _fig(10, 1.7 * k + 0.6, nrows=k, sharex=True)
    for i, ax in enumerate(axes):
        ax.plot(t, true[:, i], color="k", lw=1.2, label=true_label)
        ax.plot(t, mapped[:, i], color="tab:purple", lw=1.0, alpha=0.85, label=mapped_label)
        lab = f"dim {i}" + (f" (held-out R$^2$ = {r2[i]:.2f})" if r2 is not None and np.isfinite(r2[i]) else "")
        ax.set_title(lab, fontsize=9, loc="left")
    axes[0].legend(frameon=False, fontsize=8, loc="upper right", ncols=2)
    axes[-1].set_xlabel("time (s)")
    if title:
        fig.suptitle(title)
    return fig


def grouped_bars(categories: Sequence[str], series: Mapping[str, Sequence[float | None]],
                 chance: Sequence[float | None] | None = None, ylabel: str = "", title: str = "",
                 ylim: tuple[float, float] | None = None) -> Figure:
    """Bars for several models (series: {model: (n_categories,) values, None/NaN = not available}) in each of
    ``categories`` (e.g. "active: image", "active->passive: image"); chance: (n_categories,) drawn as a short black
    line over each group."""
    cats = list(categories)
    fig, (ax,) = _fig(max(6.0, 0.9 * len(cats) * max(1, len(series)) ** 0.5 + 2), 3.6)
    width = 0.8 / max(1, len(series))
    x = np.arange(len(cats))
    for j, (name, vals) in enumerate(series.items()):
        v = np.array([np.nan if a is None else float(a) for a in vals], dtype=float)
        color = "tab:purple" if name == "teacher" else "tab:red" if name == "student" else \
            _SERIES_COLORS[(j + 1) % len(_SERIES_COLORS)]
        ax.bar(x - 0.4 + width * (j + 0.5), v, width, label=name, color=color)
    if chance is not None:
        for xi, c in zip(x, chance):
            if c is not None and np.isfinite(c):
                ax.plot([xi - 0.42, xi + 0.42], [c, c], color="k", lw=1.5)
        ax.plot([], [], color="k", lw=1.5, label="chance")
    ax.set_xticks(x, cats, rotation=20 if len(cats) > 4 else 0, ha="right" if len(cats) > 4 else "center",
                  fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never on a bar
    return fig


# ------------------------------------------------------------------------------------------------- student
def ei_rasters(t: np.ndarray, exc: np.ndarray, inh: np.ndarray) -> Figure:
    """Student spikes: exc (T, n_E) and inh (T, n_I) bool against t (T,) s, E panel above I panel."""
    fig, (a, b) = _fig(10, 4.2, nrows=2, sharex=True, gridspec_kw=dict(height_ratios=[max(1, exc.shape[1]),
                                                                                      max(1, inh.shape[1])]))
    _raster(a, t, exc, EXC_COLOR, 6.0)
    _raster(b, t, inh, INH_COLOR, 6.0)
    a.set(ylabel=f"E ({exc.shape[1]})", title="student spikes (held-out input)")
    b.set(ylabel=f"I ({inh.shape[1]})", xlabel="time (s)")
    return fig


def rate_histogram(rates_hz: np.ndarray, is_exc: np.ndarray, band: Sequence[float] | None) -> Figure:
    """Per-neuron rate distributions (Hz) of E and I neurons side by side (bars beside each other, each population
    as a fraction of its own neurons, so 256 E and 64 I compare by shape; dashed lines: their medians; in cortex
    fast-spiking I cells fire above E cells), with the homeostatic band (low, high) in Hz shaded: the run's own
    (the student's ``rate_band_hz`` metric); None (a run that did not record it): no band drawn."""
    r, e = np.asarray(rates_hz, float), np.asarray(is_exc, bool)
    fig, (ax,) = _fig(5.0, 3.2)
    rmax = float(np.nanmax(r)) if r.size else 1.0
    if band is None:
        title, top = "firing rates (band not recorded)", max(rmax, 1.0) if np.isfinite(rmax) else 1.0
    else:
        lo, hi = float(band[0]), float(band[1])
        ax.axvspan(lo, hi, color="tab:green", alpha=0.15, label=f"{lo:g}-{hi:g} Hz band")
        inside = np.mean((r >= lo) & (r <= hi)) if r.size else np.nan
        title, top = f"firing rates: {inside:.0%} in band", max(hi * 1.5, rmax)
    bins = np.linspace(0, top, 40)
    groups = [(r[m], c, name) for m, c, name in ((e, EXC_COLOR, "E"), (~e, INH_COLOR, "I")) if m.any()]
    if groups:
        ax.hist([g[0] for g in groups], bins=bins, color=[g[1] for g in groups],
                weights=[np.full(len(g[0]), 1.0 / len(g[0])) for g in groups],
                label=[f"{g[2]} (n={len(g[0])})" for g in groups])
        for x, c, name in groups:
            med = float(np.median(x))
            ax.axvline(med, color=c, ls="--", lw=1.2, label=f"{name} median {med:.1f} Hz")
    ax.set(xlabel="rate (Hz)", ylabel="fraction of neurons", title=title)
    ax.legend(frameon=False, fontsize=8)
    return fig


def cv_isi_histogram(cv: np.ndarray, is_exc: np.ndarray, band: tuple[float, float] = (0.5, 1.5)) -> Figure:
    """Histogram of the CV of inter-spike intervals per neuron (NaN, too few spikes, left out), target band shaded;
    Poisson firing gives 1."""
    c, e = np.asarray(cv, float), np.asarray(is_exc, bool)
    ok = np.isfinite(c)
    fig, (ax,) = _fig(5.0, 3.2)
    ax.axvspan(*band, color="tab:green", alpha=0.15, label="target median band")
    bins = np.linspace(0, max(2.0, float(np.nanmax(c)) if ok.any() else 2.0), 40)
    ax.hist([c[ok & e], c[ok & ~e]], bins=bins, stacked=True, color=[EXC_COLOR, INH_COLOR], label=["E", "I"])
    if ok.any():
        ax.axvline(np.median(c[ok]), color="k", lw=1, label=f"median {np.median(c[ok]):.2f}")
    ax.set(xlabel="CV of ISI", ylabel="neurons", title=f"irregularity ({int((~ok).sum())} neurons without enough ISIs)")
    ax.legend(frameon=False, fontsize=8)
    return fig


def weight_matrix(w: np.ndarray, n_exc: int) -> Figure:
    """Signed recurrent weights w (N, N) [post, pre], E neurons first, on a diverging colormap centred at 0
    (E columns red, I columns blue under Dale's principle); lines mark the E/I blocks."""
    w = np.asarray(w, float)
    lim = float(np.nanpercentile(np.abs(w), 99)) or 1.0
    fig, (ax,) = _fig(5.6, 4.8)
    im = ax.imshow(w, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -lim, lim), interpolation="nearest")
    for f in (ax.axvline, ax.axhline):
        f(n_exc - 0.5, color="k", lw=0.8)
    n = w.shape[0]
    ax.set_xticks([n_exc / 2, n_exc + (n - n_exc) / 2], ["E (pre)", "I (pre)"])
    ax.set_yticks([n_exc / 2, n_exc + (n - n_exc) / 2], ["E (post)", "I (post)"])
    ax.set_title("recurrent weights W[post, pre]")
    fig.colorbar(im, ax=ax, shrink=0.8, label="weight")
    return fig


def cca_spectrum(cca: Sequence[float], null: Sequence[float] | float | None = None, target: float | None = 0.7,
                 title: str = "held-out canonical correlations") -> Figure:
    """Held-out canonical correlations (D,) by index against the null's (D,) (or its mean, a line)."""
    c = np.asarray(cca, float)
    fig, (ax,) = _fig(5.6, 3.2)
    ax.plot(np.arange(1, len(c) + 1), c, "o-", color="tab:red", ms=4, label=f"student (mean {np.mean(c):.2f})")
    if null is not None:
        nv = np.asarray(null, float)
        if nv.ndim == 0:
            ax.axhline(float(nv), color="tab:gray", ls=":", label=f"null mean {float(nv):.2f}")
        else:
            ax.plot(np.arange(1, len(nv) + 1), nv, "s-", color="tab:gray", ms=3,
                    label=f"time-shifted null (mean {np.mean(nv):.2f})")
    if target is not None:
        ax.axhline(target, color="tab:green", ls="--", lw=1, label=f"target mean {target:g}")
    ax.set(xlabel="canonical pair", ylabel="correlation (test blocks)", ylim=(min(0.0, np.nanmin(c) - 0.05), 1.0),
           title=title)
    ax.legend(frameon=False, fontsize=8)
    return fig
