"""The QC figure of a prepared dataset (``qc.png``), drawn only from what ``prepare`` wrote (qc.json, dataset.h5).

The data layer does not import this module: the callers above it (the CLI's ``prepare``, the pipeline, through
``prepare_many`` too) pass :func:`plot_qc` to :func:`neurojepa.data.prepare.prepare` as ``draw_qc``, which calls it
on the temporary directory before the atomic rename.

Top row: firing-rate distribution (kept vs dropped, log axis), units per area (kept vs dropped), units dropped by
reason. Bottom row: a raster of a ``raster_s`` window in the middle of each state's longest run of bins (binned
counts, so the time resolution is one bin; at most ``max_units`` units, the highest-rate ones on top).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_qc(prepared_dir: str | Path, out: str | Path, *, raster_s: float = 2.0, max_units: int = 150,
            max_states: int = 4) -> Path:
    """Draw the QC figure of ``prepared_dir`` into ``out`` (PNG). Returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.dataset import PreparedSession, read_table
    from ..data.intervals import Intervals

    ps = PreparedSession.load(prepared_dir)
    try:
        allu = read_table(ps.h5["qc_units"])
        states = list(ps.qc["states"])[:max_states]
        fig = plt.figure(figsize=(4.2 * max(3, len(states)), 7.5), layout="constrained")
        grid = fig.add_gridspec(2, max(3, len(states)))

        ax = fig.add_subplot(grid[0, 0])
        rate = allu["rate_hz"].to_numpy(float)
        kept = (allu["reason"] == "").to_numpy()
        pos = rate[np.isfinite(rate) & (rate > 0)]
        if len(pos):
            bins = np.logspace(np.log10(pos.min()), np.log10(pos.max()) + 1e-6, 30)
            ax.hist([rate[kept & np.isfinite(rate)], rate[~kept & np.isfinite(rate)]], bins=bins, stacked=True,
                    label=["kept", "dropped"], color=["tab:blue", "tab:gray"])
            ax.set_xscale("log")
            ax.legend(frameon=False)
        ax.set(xlabel="firing rate (Hz)", ylabel="units", title="rate distribution")

        ax = fig.add_subplot(grid[0, 1])
        by_area = allu.assign(kept=kept).groupby("area")["kept"].agg(["sum", "count"]).sort_values("count")
        y = np.arange(len(by_area))
        ax.barh(y, by_area["sum"], color="tab:blue", label="kept")
        ax.barh(y, by_area["count"] - by_area["sum"], left=by_area["sum"], color="tab:gray", label="dropped")
        ax.set_yticks(y, by_area.index)
        ax.set(xlabel="units", title="units per area")
        ax.legend(frameon=False)

        ax = fig.add_subplot(grid[0, 2])
        reasons = {"kept": ps.qc["units_kept"], **ps.qc["dropped"]}
        y = np.arange(len(reasons))
        ax.barh(y, list(reasons.values()), color=["tab:blue"] + ["tab:gray"] * (len(reasons) - 1))
        ax.set_yticks(y, list(reasons))
        ax.invert_yaxis()
        ax.set(xlabel="units", title=f"QC: {ps.qc['units_kept']} of {ps.qc['units_total']} kept")

        state = ps.labels["state"].to_numpy()
        order = np.argsort(-ps.counts[: min(ps.n_bins, 20_000)].sum(axis=0))[:max_units]  # busiest units on top
        n = max(1, int(round(raster_s / ps.bin_size)))
        for j, s in enumerate(states):
            ax = fig.add_subplot(grid[1, j])
            runs = Intervals.runs(state == s, state)
            if runs:
                a, b = max(runs, key=lambda r: r[1] - r[0])
                a0 = max(a, (a + b) // 2 - n // 2)
                b0 = min(b, a0 + n)
                ti, ui = np.nonzero(ps.counts[a0:b0][:, order])  # column k = k-th busiest unit
                ax.scatter(ps.bin_t0[a0 + ti], ui, s=1.5, c="k", marker="|", linewidths=0.6)
                ax.set_xlim(ps.bin_t0[a0], ps.bin_t0[a0] + (b0 - a0) * ps.bin_size)
                ax.invert_yaxis()
            ax.set(xlabel="time (s)", ylabel="unit (by rate)" if j == 0 else "", title=f"raster: {s}")
        fig.suptitle(f"{ps.qc['session_id']}: {ps.n_bins} bins of {ps.qc['bin_ms']:g} ms", fontsize=11)
        out = Path(out)
        fig.savefig(out, dpi=90)
        plt.close(fig)
    finally:
        ps.close()
    return out
