"""``neurojepa inspect``: a one-screen summary of a :class:`~neurojepa.data.session.Session`, and its validation.

Everything the summary shows comes from the small tables and the spike-count index; no spike times are read.
:func:`validate_spike_times` then reads every unit's spike times (in unit batches, so memory stays at one batch)
and applies the checks ``prepare`` applies: non-finite or negative times are an :class:`InputError` (one line
naming the file and the unit, exit code 2), unsorted times and duplicate spikes are warnings (``prepare`` sorts
the times and keeps the duplicates). ``neurojepa inspect --quick`` skips it and reads the index only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import InputError
from .checks import check_spike_times
from .session import STATE_ACTIVE, STATE_PASSIVE, Session


def _presentation_states(session: Session) -> np.ndarray:
    """(n_presentations,) state of each stimulus row: by its ``stimulus_block`` when the epochs have blocks, else by time."""
    st, ep = session.stimuli, session.epochs
    if "stimulus_block" in st and "block" in ep:
        lookup = dict(zip(ep["block"].tolist(), ep["state"].tolist()))
        return np.asarray([lookup.get(b, "") for b in pd.to_numeric(st["stimulus_block"], errors="coerce")], dtype=object)
    return session.state_at(st["start_time"].to_numpy())


def flash_sequences_match(session: Session) -> bool | None:
    """Whether the passive block replays exactly the active block's ``image_name`` sequence (omissions included).

    None when the session has no active or no passive presentations, or no ``image_name`` column.
    """
    st = session.stimuli
    if not len(st) or "image_name" not in st:
        return None
    states = _presentation_states(session)
    active = st["image_name"][states == STATE_ACTIVE].astype(str).tolist()
    passive = st["image_name"][states == STATE_PASSIVE].astype(str).tolist()
    if not active or not passive:
        return None
    return active == passive


def _fmt_s(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s"


def _count(df: pd.DataFrame, col: str) -> int:
    return int(df[col].fillna(False).astype(bool).sum()) if col in df else 0


def print_summary(session: Session, console: Console | None = None) -> None:
    """Print the session's units by area, spikes, state blocks, presentations, trials, behaviour and ground truth."""
    con = console or Console()
    con.print(f"[bold]session[/bold] {escape(str(session.session_id))}  [dim]{escape(str(session.source or 'in memory'))}[/dim]")

    counts = session.spike_counts()
    units = session.units.assign(spikes=counts.reindex(session.units.index).fillna(0).astype(np.int64))
    t = Table(title="units by area", title_justify="left")
    for c in ("area", "units", "fs", "spikes"):
        t.add_column(c, justify="left" if c == "area" else "right")
    for area, g in units.groupby("area", sort=True):
        t.add_row(escape(str(area)), str(len(g)), str(int((g["cell_type"] == "fs").sum())), f"{int(g['spikes'].sum()):,}")
    con.print(t)
    con.print(f"total: {session.n_units} units, {int(counts.sum()):,} spikes")

    ep = session.epochs
    t = Table(title="blocks and states", title_justify="left")
    for c in ("block", "state", "stimulus", "start", "duration"):
        t.add_column(c)
    for r in ep.itertuples(index=False):
        t.add_row(str(getattr(r, "block", "")), escape(str(r.state)), escape(str(getattr(r, "stimulus_name", ""))),
                  f"{r.start_time:.1f} s", _fmt_s(r.stop_time - r.start_time))
    con.print(t)
    con.print("time per state: " + ", ".join(f"{escape(k)} {_fmt_s(v)}" for k, v in session.state_durations().items()))

    st = session.stimuli
    if len(st):
        states = _presentation_states(session)
        t = Table(title="stimulus presentations per state", title_justify="left")
        for c in ("state", "flashes", "images", "changes", "omissions"):
            t.add_column(c)
        for s in dict.fromkeys(states):
            sub = st[states == s]
            imgs = sorted(set(sub["image_name"].dropna().astype(str)) - {"omitted", "nan", ""}) if "image_name" in sub else []
            omitted = _count(sub, "omitted")  # flashes shown = presentations that were not omitted
            t.add_row(escape(str(s)) or "(outside blocks)", str(len(sub) - omitted),
                      escape(f"{len(imgs)}: {', '.join(imgs[:8])}") if imgs else "-", str(_count(sub, "is_change")), str(omitted))
        con.print(t)
        match = flash_sequences_match(session)
        con.print("active and passive flash sequences: " + {True: "[green]identical[/green]", False: "[red]differ[/red]",
                                                             None: "n/a (no active/passive pair)"}[match])

    tr = session.trials
    if len(tr):
        outcomes = ", ".join(f"{c} {_count(tr, c)}" for c in ("go", "catch", "hit", "miss", "false_alarm", "correct_reject",
                                                                "aborted") if c in tr)
        con.print(f"trials: {len(tr)}" + (f" ({outcomes})" if outcomes else ""))
    else:
        con.print("trials: none")

    if session.behavior:
        t = Table(title="behaviour", title_justify="left")
        for c in ("stream", "kind", "n", "span"):
            t.add_column(c)
        for name, b in session.behavior.items():
            ts = b.timestamps
            span = f"{ts.min():.1f}-{ts.max():.1f} s" if len(ts) else "-"
            t.add_row(escape(name), "events" if b.is_events else escape(f"samples ({b.unit})") if b.unit else "samples", f"{len(ts):,}", span)
        con.print(t)
    else:
        con.print("behaviour: none")

    gt = session.ground_truth
    con.print("ground truth: " + (f"present ({gt.n_latents} latents at {gt.latent_dt * 1e3:g} ms, {len(gt.unit_ids)} units)"
                                  if gt is not None else "absent"))


def validate_spike_times(session: Session, batch: int = 64) -> list[str]:
    """Check every unit's spike times as ``prepare`` does; returns warning lines (empty when all is well).

    Raises :class:`InputError` naming the file (or session) and the first bad unit for NaN, infinite or negative
    spike times.
    """
    where = session.source or session.session_id
    if session.n_units == 0:
        raise InputError(where, "the Units table holds no units")
    finite, duplicates = check_spike_times(session, session.units.index.to_numpy(), batch=batch)
    if not finite["ok"]:  # in-memory sessions report here; NWB files already raised on reading the bad unit
        bad = finite["units_nonfinite"] or finite["units_unsorted"]
        raise InputError(where, f"{finite['detail']} (first: unit {bad[0]})")
    warnings = []
    unsorted = getattr(session.spikes, "unsorted_units", [])
    if unsorted:
        warnings.append(f"{len(unsorted)} units have unsorted spike times (e.g. unit {unsorted[0]}); "
                        "prepare sorts them")
    if not duplicates["ok"]:
        warnings.append(f"{duplicates['detail']} (e.g. unit {duplicates['units'][0]}); prepare keeps them")
    return warnings
