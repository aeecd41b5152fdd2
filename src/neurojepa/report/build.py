"""Build ``run_dir/report.html`` from a finished (or partly finished) run, reading only saved results.

Inputs (each optional; what is missing is shown as "not available", never faked)::

    run_dir/metrics.json           {"data": qc, "teacher": {...}, "student": {...}}; a missing section is taken
                                   from the stage's own file (prepare/qc.json, teacher/metrics.json, student/...)
    run_dir/config.yaml            the run's resolved config (shown at the bottom), and each stage's config.yaml
    run_dir/prepare/               the prepared dataset (PreparedSession), qc.json, qc.png, provenance.json
    run_dir/teacher/latents.npz    latents (n_bins, D) for every bin, bin_size, t_start
    run_dir/teacher/**/metrics.csv Lightning CSVLogger training logs
    run_dir/student/readout.npz    readout (n_bins, D): the student's latents for every bin
    run_dir/student/report_data.npz  what only the student's simulation knows (keys: student/report_data.py)
    run_dir/student/**/metrics.csv training logs

"Reading results" includes cheap linear read-outs of saved arrays: the teacher-vs-ground-truth trajectories are a
ridge map from ``latents.npz`` to the dataset's ``gt_latents`` fit on train bins and drawn on a test stretch (the
same protocol as the teacher's ``gt_r2``), and likewise student readout -> teacher latents. Nothing is retrained.

Missing inputs are expected (a run stopped after ``prepare``, a real recording without ground truth); an input
that exists but cannot be read is shown as not available with the reason, so one broken file does not hide the
rest of the page.
"""

from __future__ import annotations

from html import escape as html_escape

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, atomic_path
from . import figures as F
from .html import Section, figure_img, not_available, page, paragraph, png_img, preformatted, row, table
from .targets import NA, PASS, dig, evaluate_targets, number, rate_band

log = logging.getLogger(__name__)

BASELINE_ORDER = ("smoothing", "pca", "fa", "cebra", "raw")  # raw: the smoothing baseline's name before issue 16
TRAJECTORY_S = 4.0  # length of the test stretch drawn in trajectory figures


# ---------------------------------------------------------------------------------------------- reading
def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("report: cannot read %s: %s", path, e)
        return None


def load_metrics(run_dir: Path) -> dict:
    """The merged metrics: run_dir/metrics.json, with any missing section filled from the stage's own file."""
    m = _read_json(run_dir / "metrics.json") or {}
    stage_files = {"data": (run_dir / "prepare" / "qc.json", None),
                   "teacher": (run_dir / "teacher" / "metrics.json", "teacher"),
                   "student": (run_dir / "student" / "metrics.json", "student")}
    for section, (path, key) in stage_files.items():
        if not m.get(section):
            doc = _read_json(path)
            if doc is not None:
                m[section] = doc.get(key) if key else doc
    return m


def _load_npz(path: Path) -> tuple[dict | None, str]:
    """({key: array}, "") or (None, reason)."""
    if not path.is_file():
        return None, f"{path.name} not found"
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}, ""
    except (OSError, ValueError) as e:
        return None, f"{path.name} unreadable ({e})"


def find_csv_logs(stage_dir: Path) -> list[Path]:
    """Lightning CSVLogger files (``metrics.csv``) under stage_dir, leaving out ablations (``unconstrained/``);
    several (a resumed run writes a new version directory) are in path order."""
    if not stage_dir.is_dir():
        return []
    return sorted(p for p in stage_dir.rglob("metrics.csv") if "unconstrained" not in p.relative_to(stage_dir).parts)


def read_curves(*csvs: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{column: (step, value)} of every train_*/val_* column of one or more CSVLogger files (only rows where the
    column was logged; the files of a resumed run are joined and sorted by step)."""
    import pandas as pd

    frames = [df for df in (pd.read_csv(c) for c in csvs) if "step" in df]
    if not frames:
        return {}
    df = pd.concat(frames, ignore_index=True).sort_values("step", kind="stable")
    out = {}
    for col in df.columns:
        if col.startswith(("train_", "val_")) and pd.api.types.is_numeric_dtype(df[col]):
            ok = df[col].notna()
            if ok.any():
                out[col] = (df.loc[ok, "step"].to_numpy(float), df.loc[ok, col].to_numpy(float))
    return out


def _open_prepared(run_dir: Path):
    from ..data.dataset import PreparedSession

    try:
        return PreparedSession.load(run_dir / "prepare")
    except (InputError, OSError, KeyError) as e:
        log.info("report: no prepared dataset (%s)", e)
        return None


def sample_windows(ps, seconds: float = 2.0, max_units: int = 60, max_states: int = 4) -> dict:
    """{state: (t (T,) s, counts (T, units))}: a ``seconds`` window in the middle of each state's longest run of
    test bins (any split if the state has none), the ``max_units`` busiest units, busiest first."""
    from ..data.intervals import Intervals

    state = ps.labels["state"].to_numpy().astype(str)
    order = np.argsort(-ps.counts[: min(ps.n_bins, 20_000)].sum(axis=0), kind="stable")[:max_units]
    n = max(1, int(round(seconds / ps.bin_size)))
    out = {}
    for s in [s for s in dict.fromkeys(state.tolist()) if s][:max_states]:
        runs = Intervals.runs((state == s) & (ps.split == "test"), state) or Intervals.runs(state == s, state)
        a, b = max(runs, key=lambda r: r[1] - r[0])
        a0 = max(a, (a + b) // 2 - n // 2)
        b0 = min(b, a0 + n)
        out[s] = (ps.bin_t0[a0:b0], ps.counts[a0:b0][:, order])
    return out


def mapped_stretch(x: np.ndarray, y: np.ndarray, split: np.ndarray, bin_size: float, seconds: float = TRAJECTORY_S,
                   dims: int = 3, max_fit_rows: int = 50_000):
    """Fit a ridge map x (n, Dx) -> y (n, Dy) on train bins, apply it to a ``seconds`` stretch in the middle of
    the longest run of test bins. Returns (t (T,) s from the stretch start, y (T, k), mapped (T, k), r2 (k,)
    held-out R^2 on all test bins) for the first k = min(dims, Dy) dims, or None without train/test bins."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score

    from ..data.intervals import Intervals

    split = np.asarray(split).astype(str)
    train = np.flatnonzero(split == "train")
    runs = Intervals.runs(split == "test", np.zeros(len(split)))
    if len(train) <= x.shape[1] or not runs:
        return None
    if len(train) > max_fit_rows:  # an even subsample: the map has few parameters
        train = train[np.linspace(0, len(train) - 1, max_fit_rows).astype(int)]
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-8
    model = RidgeCV(alphas=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)).fit((x[train] - mu) / sd, y[train])
    k = min(dims, y.shape[1])
    test = split == "test"
    r2 = r2_score(y[test][:, :k], model.predict((x[test] - mu) / sd)[:, :k], multioutput="raw_values")
    a, b = max(runs, key=lambda r: r[1] - r[0])
    n = max(2, int(round(seconds / bin_size)))
    a0 = max(a, (a + b) // 2 - n // 2)
    b0 = min(b, a0 + n)
    pred = model.predict((x[a0:b0] - mu) / sd)
    return np.arange(b0 - a0) * bin_size, y[a0:b0, :k], pred[:, :k], r2


# ---------------------------------------------------------------------------------------------- sections
def _kv_table(pairs: list[tuple[str, Any]]) -> str:
    return table(["quantity", "value"], [[k, v] for k, v in pairs])


def _scalar(m: dict | None, key: str):
    """A metric for a table: a finite number, an int, or None (shown as not available)."""
    v = (m or {}).get(key)
    if isinstance(v, bool) or isinstance(v, int):
        return v
    return number(v)


def _data_section(run_dir: Path, data: dict | None, ps) -> Section:
    sec = Section("data", "Data")
    if not data:
        sec.add(not_available("data summary (prepare/qc.json)"))
    else:
        states = data.get("states") or {}
        splits = data.get("split_bins") or {}
        checks = data.get("checks") or []
        failed = [str(c.get("name", "?")) for c in checks if isinstance(c, dict) and c.get("ok") is False]
        sec.add(_kv_table([("session", data.get("session_id")), ("units kept", data.get("units_kept")),
                           ("units total", data.get("units_total")), ("bins", data.get("n_bins")),
                           ("bin (ms)", number(data.get("bin_ms"))),
                           ("duration (s)", number(data.get("t_stop", math.nan)) - number(data.get("t_start", 0.0))
                            if number(data.get("t_stop")) is not None and number(data.get("t_start")) is not None
                            else None),
                           *[(f"bins in state '{s}'", int(v)) for s, v in states.items()],
                           *[(f"bins in split '{s}'", int(v)) for s, v in splits.items()],
                           ("checks not passed", (", ".join(failed) or "none") if checks else None)]))
        if data.get("summary"):
            sec.add(preformatted(str(data["summary"])))
    qc_png = run_dir / "prepare" / "qc.png"
    sec.subheading("Quality control")
    sec.add(png_img(qc_png.read_bytes(), "QC figure", "Units kept and dropped, rates, rasters.")
            if qc_png.is_file() else not_available("QC figure (prepare/qc.png)"))
    sec.subheading("Sample window per state")
    if ps is None:
        sec.add(not_available("rasters (prepared dataset)"))
    else:
        sec.add(figure_img(F.state_rasters(sample_windows(ps)), "rasters per state",
                           "Binned spike counts, 2 s from the middle of each state's longest test block; "
                           "the busiest units on top."))
    return sec


def _model_series(teacher: dict | None, student: dict | None, value) -> dict[str, dict]:
    """{model: section} for teacher, its baselines and the student, in display order, where present."""
    out = {}
    if teacher:
        out["teacher"] = teacher
        for b in BASELINE_ORDER:
            if dig(teacher, "baselines", b):
                out[b] = teacher["baselines"][b]
    if student:
        out["student"] = student
    return {k: v for k, v in out.items() if value(v) is not None}


def _decoding_figure(models: dict[str, dict], cross: bool, title: str):
    """Balanced accuracy of each model's ``decoding`` section: within-state results ("state: task"), or with
    ``cross`` the tasks that have cross-state results, as "task: A->A" (within) beside "task: A->B". Returns None
    when no model has such results."""
    cats: dict[str, tuple[str, str, str]] = {}  # label -> keys into decoding
    for sec in models.values():
        dec = sec.get("decoding") or {}
        ctasks = {t for tasks in (dec.get("cross") or {}).values() for t in (tasks or {})}
        for state, tasks in (dec.get("within") or {}).items():
            for task in tasks or {}:
                if not cross:
                    cats.setdefault(f"{state}: {task}", ("within", state, task))
                elif task in ctasks:
                    cats.setdefault(f"{task}: {state}->{state}", ("within", state, task))
        for pair, tasks in (dec.get("cross") or {}).items() if cross else ():
            for task in tasks or {}:
                cats.setdefault(f"{task}: {pair}", ("cross", pair, task))
    if not cats:
        return None
    labels = sorted(cats)
    series = {name: [number(dig(sec, "decoding", *cats[c], "balanced_accuracy")) for c in labels]
              for name, sec in models.items()}
    chance = []  # the chance level each result reports for its balanced accuracy (1 / classes)
    for c in labels:
        v = [x for x in (number(dig(sec, "decoding", *cats[c], "chance")) for sec in models.values()) if x]
        chance.append(v[0] if v else None)
    return F.grouped_bars(labels, series, chance, "balanced accuracy (test blocks)", title, (0, 1.02))


def _decoding_table(dec: dict | None) -> str | None:
    """Every decoding result of one model: balanced accuracy beside its chance level and the rows it rests on."""
    rows = []
    for kind, groups in (("within", (dec or {}).get("within") or {}), ("across", (dec or {}).get("cross") or {})):
        for group, tasks in groups.items():
            for task, res in (tasks or {}).items():
                res = res or {}
                rows.append([task, f"{group}" if kind == "across" else f"{group}->{group}",
                             number(res.get("balanced_accuracy")), number(res.get("chance")),
                             res.get("n_classes", ""), res.get("n_test", "")])
    if not rows:
        return None
    return table(["task", "train->test state", "balanced accuracy", "chance (1 / classes)", "classes", "test flashes"],
                 rows)


def _teacher_section(run_dir: Path, teacher: dict | None, ps) -> Section:
    sec = Section("teacher", "Teacher (LeJEPA)")
    if not teacher:
        sec.add(not_available("teacher metrics (teacher/metrics.json)"))
    base = (teacher or {}).get("baselines") or {}
    names = ["teacher"] + [b for b in BASELINE_ORDER if b in base]
    rows = []
    for key in ("gt_r2", "gt_r2_cross_state", "cobps", "forecast_r2", "rankme", "sigreg_heldout"):
        rows.append([key, _scalar(teacher, key)] + [_scalar(base.get(b), key) for b in names[1:]])
    if teacher:
        rows += [["embed_dim", _scalar(teacher, "embed_dim")] + [""] * (len(names) - 1),  # "": not applicable
                 ["train_seconds", _scalar(teacher, "train_seconds")] + [""] * (len(names) - 1)]
        sec.add(table(["metric (held-out)"] + names, rows))
        sec.add(paragraph("cobps: bits/spike of the held-out units from each model's features, Poisson GLM with one "
                          "penalty chosen on validation bins, fit on every train bin (the Neural Latents Benchmark's "
                          "co-smoothing; smoothing is its smoothed-counts baseline). forecast_r2: skill of the "
                          "forecast of the held-in units' counts over the next bins against the mean-rate forecast "
                          "(0 = no better than each unit's mean rate); the teacher forecasts with its predictor, "
                          "the baselines with a linear forecast read-out."))

    sec.subheading("Training curves")
    curves = read_curves(*find_csv_logs(run_dir / "teacher"))
    sec.add(figure_img(F.training_curves(curves, "teacher training"), "teacher training curves")
            if curves else not_available("teacher training logs (metrics.csv)"))

    sec.subheading("Collapse diagnostics")
    std = (teacher or {}).get("per_dim_std")
    if std and teacher.get("embed_dim"):
        ranks = {b: number(base[b].get("rankme")) for b in names[1:] if number(base[b].get("rankme")) is not None}
        sec.add(figure_img(F.collapse_diagnostics(std, number(teacher.get("rankme")), int(teacher["embed_dim"]),
                                                  number(teacher.get("sigreg_heldout")), ranks),
                           "collapse diagnostics", "A collapsed code has dims with std ~0 and a RankMe near 1."))
    else:
        sec.add(not_available("collapse diagnostics (per_dim_std, embed_dim)"))

    sec.subheading("Latent trajectories vs ground truth")
    z, why = _load_npz(run_dir / "teacher" / "latents.npz")
    gt = ps.gt_latents if ps is not None else None
    if z is None or ps is None or gt is None:
        reason = why or ("no prepared dataset" if ps is None else "the recording has no ground-truth latents")
        sec.add(not_available(f"teacher vs ground truth ({reason})"))
    elif len(z["latents"]) != len(gt):
        sec.add(not_available(f"teacher vs ground truth (latents have {len(z['latents'])} bins, dataset {len(gt)})"))
    else:
        res = mapped_stretch(np.asarray(z["latents"], float), np.asarray(gt, float), ps.split, ps.bin_size)
        sec.add(figure_img(F.latent_trajectories(*res), "teacher latents vs ground truth",
                           f"Ridge map teacher -> true latents fit on train bins; {TRAJECTORY_S:g} s of a test block, "
                           "first 3 true dims.")
                if res else not_available("teacher vs ground truth (no train/test bins)"))

    sec.subheading("Decoding within states, against baselines")
    models = _model_series(teacher, None, lambda s: s.get("decoding") or None)
    fig = _decoding_figure(models, False, "within-state decoding (train blocks -> test blocks)")
    sec.add(figure_img(fig, "decoding within states", "Black line: chance (1 / classes).") if fig
            else not_available("decoding (the recording has no stimulus labels, or no teacher metrics)"))
    tab = _decoding_table((teacher or {}).get("decoding"))
    if tab:
        sec.add(tab)
    return sec


def _student_section(run_dir: Path, student: dict | None, ps) -> Section:
    sec = Section("student", "Student (spiking E/I network)")
    if not student:
        sec.add(not_available("student metrics (student/metrics.json)"))
    else:
        keys = ("cca_heldout_mean", "cca_null_mean", "cca_heldout_mean_unconstrained", "rate_hz_median",
                "rate_hz_median_exc", "rate_hz_median_inh", "rate_ratio_inh_exc", "frac_in_band", "cv_isi_median",
                "lv_median", "frac_isi_below_5ms", "fano_median", "n_silent", "n_saturated", "dale_violations",
                "n_exc", "n_inh", "ei_current_corr_median",
                "decoding_ratio_mean", "decoding_ratio_min", "train_seconds")
        sec.add(_kv_table([(k, _scalar(student, k)) for k in keys]))
    rd, why = _load_npz(run_dir / "student" / "report_data.npz")
    have = lambda *ks: rd is not None and all(k in rd for k in ks)  # noqa: E731

    sec.subheading("Training curves")
    curves = read_curves(*find_csv_logs(run_dir / "student"))
    sec.add(figure_img(F.training_curves(curves, "student training"), "student training curves")
            if curves else not_available("student training logs (metrics.csv)"))

    sec.subheading("Spike rasters (E and I)")
    sec.add(figure_img(F.ei_rasters(rd["raster_t"], rd["raster_exc"], rd["raster_inh"]), "student E and I rasters")
            if have("raster_t", "raster_exc", "raster_inh")
            else not_available(f"student rasters ({why or 'no raster'})"))
    sec.subheading("Firing rates and irregularity")
    sec.add(row(figure_img(F.rate_histogram(rd["rates_hz"], rd["is_exc"], rate_band(student)), "rate histogram")
                if have("rates_hz", "is_exc") else not_available(f"rate histogram ({why or 'no rates_hz'})"),
                figure_img(F.cv_isi_histogram(rd["cv_isi"], rd["is_exc"]), "CV of ISI histogram")
                if have("cv_isi", "is_exc") else not_available(f"CV of ISI ({why or 'no cv_isi'})")))
    sec.subheading("Recurrent weights and their E/I blocks")
    if have("w_rec"):
        n_exc = int(rd["is_exc"].sum()) if have("is_exc") else int(_scalar(student, "n_exc") or 0)
        sec.add(figure_img(F.weight_matrix(rd["w_rec"], n_exc), "recurrent weight matrix",
                           "Dale's principle: every column (presynaptic neuron) has one sign."))
    else:
        sec.add(not_available(f"weight matrix ({why or 'no w_rec'})"))

    sec.subheading("CCA spectrum against the null")
    cca = (student or {}).get("cca_heldout")
    if cca:
        null = rd["cca_null"] if have("cca_null") else number((student or {}).get("cca_null_mean"))
        sec.add(figure_img(F.cca_spectrum(cca, null), "CCA spectrum",
                           "CCA directions fit on train blocks, correlations on test blocks."))
    else:
        sec.add(not_available("held-out CCA spectrum (cca_heldout)"))

    sec.subheading("Student readout vs teacher latents")
    ro, why_r = _load_npz(run_dir / "student" / "readout.npz")
    tz, why_t = _load_npz(run_dir / "teacher" / "latents.npz")
    if ro is None or tz is None or ps is None or not len(ro["readout"]) == len(tz["latents"]) == ps.n_bins:
        sec.add(not_available(f"readout traces ({why_r or why_t or 'no prepared dataset or mismatched lengths'})"))
    else:
        res = mapped_stretch(np.asarray(ro["readout"], float), np.asarray(tz["latents"], float), ps.split, ps.bin_size)
        sec.add(figure_img(F.latent_trajectories(*res, true_label="teacher", mapped_label="student (ridge-mapped)"),
                           "student readout vs teacher", "Linear map student readout -> teacher latents fit on "
                           "train bins; a test stretch, first 3 teacher dims.")
                if res else not_available("readout traces (no train/test bins)"))
    return sec


def _e_i(firing: dict) -> str | None:
    """'E / I' median rates (Hz) of a student firing summary, None when it has no E/I split."""
    e, i = number(firing.get("rate_hz_median_exc")), number(firing.get("rate_hz_median_inh"))
    return None if e is None or i is None else f"{e:.1f} / {i:.1f}"


def _cross_section(teacher: dict | None, student: dict | None) -> Section:
    sec = Section("cross-state", "Within vs cross-state")
    sec.add(paragraph("The research question: does a code learned in one behavioural state transfer to another? "
                      "Within = read-out fit and scored in the same state; A->B = fit on A's train blocks, scored on "
                      "B's test blocks.", "note"))
    shown = False
    models = _model_series(teacher, None, lambda s: number(s.get("gt_r2")))
    pairs = sorted({p for s in models.values() for p in (s.get("gt_r2_cross_state_pairs") or {}) if p != "mean"})
    if models and pairs:
        cats = ["within (all states)"] + pairs + ["cross mean"]
        series = {n: [number(s.get("gt_r2"))] + [number(dig(s, "gt_r2_cross_state_pairs", p)) for p in pairs]
                  + [number(s.get("gt_r2_cross_state"))] for n, s in models.items()}
        sec.add(figure_img(F.grouped_bars(cats, series, None, "R$^2$ to ground-truth latents",
                                          "ground-truth recovery within vs across states"), "gt_r2 cross-state"))
        shown = True
    for key, what in (("cobps", "co-smoothing bits/spike of held-out units (Poisson GLM)"),
                      ("forecast_r2", "R^2 of a linear forecast read-out of the latent (the predictor's horizon)")):
        if _label_free_cross(sec, teacher, key, what):
            shown = True
    cross_s = {k: v for k, v in ((student or {}).get("cca_cross_state_pairs") or {}).items() if k != "mean"}
    if number((student or {}).get("cca_heldout_mean")) is not None and cross_s:
        cats = ["within"] + sorted(cross_s)
        null = number(student.get("cca_cross_state_null"))
        sec.add(figure_img(F.grouped_bars(cats, {"student": [number(student["cca_heldout_mean"])]
                                                 + [number(cross_s[c]) for c in cats[1:]]}, None,
                                          "mean held-out canonical correlation", "student CCA within vs across states",
                                          (0, 1.02)), "student CCA cross-state",
                           "" if null is None else f"Cross-state null (time-shifted teacher latents): {null:.3f}."))
        shown = True
    by_state = (student or {}).get("firing_by_state") or {}
    if by_state:
        sec.add(paragraph("Student firing on held-out chunks of each state (E/I current correlation: per neuron, "
                          "E input current vs |I input current|, median):"))
        sec.add(table(["state", "median rate (Hz)", "E / I median (Hz)", "fraction in band", "median CV of ISI",
                       "ISIs <= 5 ms", "median Fano (100 ms)", "E/I current corr", "silent", "chunks"],
                      [[st, v.get("rate_hz_median"), _e_i(v), v.get("frac_in_band"), v.get("cv_isi_median"),
                        v.get("frac_isi_below_5ms"), v.get("fano_median"), v.get("ei_current_corr_median"),
                        v.get("n_silent"), v.get("n_chunks")]
                       for st, v in sorted(by_state.items())]))
        shown = True
    beh_rows = []
    for name, sec_m in _model_series(teacher, student, lambda s: dig(s, "decoding", "behaviour") or None).items():
        for beh, res in sorted(sec_m["decoding"]["behaviour"].items()):
            beh_rows.append([name, beh, *(", ".join(f"{k}: {v:.3f}" for k, v in sorted((res.get(part) or {}).items()))
                                          for part in ("within", "cross")),
                             res.get("within_mean"), res.get("cross_mean")])
    if beh_rows:
        sec.add(paragraph("Behaviour decoding (ridge R^2 from the latents; within = fit on a state's train blocks, "
                          "scored on its test blocks; A->B = scored on B's test blocks):"))
        sec.add(table(["model", "behaviour", "within", "across", "within mean", "across mean"], beh_rows))
        shown = True
    models = _model_series(teacher, student, lambda s: dig(s, "decoding", "cross") or None)
    fig = _decoding_figure(models, True, "decoding within (A->A) vs across (A->B) states")
    if fig is not None:
        sec.add(figure_img(fig, "cross-state decoding", "Black line: chance (1 / classes)."))
        shown = True
    if not shown:
        sec.add(not_available("cross-state results (need two states: cobps_cross_state, forecast_r2_cross_state, "
                              "gt_r2_cross_state, decoding.cross, or student cca_cross_state)"))
    return sec


def _label_free_cross(sec: Section, teacher: dict | None, key: str, what: str) -> bool:
    """A table of ``{key}_within_state`` / ``{key}_cross_state_pairs`` / ``{key}_cross_state`` for the teacher and
    its baselines (metrics that need no ground truth or labels); False when no model has ``{key}_cross_state``."""
    models = _model_series(teacher, None, lambda s: number(s.get(f"{key}_cross_state")))
    if not models:
        return False
    pairs = sorted({p for s in models.values() for p in (s.get(f"{key}_cross_state_pairs") or {}) if p != "mean"})
    rows = [[n, _scalar(s, f"{key}_within_state")] + [_scalar(s.get(f"{key}_cross_state_pairs"), p) for p in pairs]
            + [_scalar(s, f"{key}_cross_state")] for n, s in models.items()]
    sec.subheading(f"{key} within vs across states")
    sec.add(paragraph(f"{what}: within = fit on a state's train blocks, scored on its test blocks (mean over "
                      "states); A->B = fit on A's train blocks, scored on B's test blocks. Needs no labels.", "note"))
    sec.add(table(["model", "within (mean)"] + pairs + ["cross mean"], rows))
    return True


def _verdict(rows: list[dict]) -> str:
    n_pass = sum(r["status"] == PASS for r in rows)
    n_na = sum(r["status"] == NA for r in rows)
    return f"{n_pass} of {len(rows)} targets met; {n_na} not available."


def _targets_section(rows: list[dict]) -> Section:
    sec = Section("targets", "Targets")
    sec.add(paragraph(_verdict(rows), "note"))
    sec.add(table(["phase", "metric", "value", "target", "status"],
                  [[r["phase"], r["name"], r["value"], r["target"], r["status"]] for r in rows],
                  row_classes=[{"not available": "na"}.get(r["status"], r["status"]) for r in rows],
                  col_classes=["", "", "", "", "status"]))
    return sec


def _config_section(run_dir: Path, metrics: dict) -> Section:
    sec = Section("config", "Configuration and code version")
    prov = _read_json(run_dir / "prepare" / "provenance.json") or {}
    code = metrics.get("code") or (_read_json(run_dir / "run.json") or {}).get("code") or prov.get("code")
    sec.add(_kv_table([("run directory", str(run_dir.resolve())),
                       ("neurojepa version", (code or {}).get("neurojepa")),
                       ("git commit", (code or {}).get("git_commit")),
                       ("uncommitted changes", (code or {}).get("git_dirty")),
                       ("input", prov.get("input")), ("input sha256", prov.get("input_sha256"))]))
    found = False
    for name in ("config.yaml", "prepare/config.yaml", "teacher/config.yaml", "student/config.yaml"):
        p = run_dir / name
        if p.is_file():
            sec.subheading(name)
            sec.add(preformatted(p.read_text()))
            found = True
    if not found:
        sec.add(not_available("resolved config (config.yaml)"))
    return sec


def _limits(metrics: dict) -> str:
    """What this recording cannot support (no ground truth, one state, no stimuli), as the pipeline recorded it."""
    limits = (metrics.get("run") or {}).get("limits") or []
    if not limits:
        return ""
    items = "".join(f"<li>{html_escape(str(x))}</li>" for x in limits)
    return f'<div class="limits"><p><b>Limits of this recording</b> (metrics shown as not available):</p><ul>{items}</ul></div>'


def build_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) from the run's saved results; returns its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(run_dir, "not a run directory")
    metrics = load_metrics(run_dir)
    targets = evaluate_targets(metrics)
    ps = _open_prepared(run_dir)
    try:
        teacher, student = metrics.get("teacher"), metrics.get("student")
        sections = [_data_section(run_dir, metrics.get("data"), ps), _teacher_section(run_dir, teacher, ps),
                    _student_section(run_dir, student, ps), _cross_section(teacher, student),
                    _targets_section(targets), _config_section(run_dir, metrics)]
    finally:
        if ps is not None:
            ps.close()
    session = (metrics.get("data") or {}).get("session_id") or run_dir.name
    doc = page(f"neurojepa run: {session}", sections,
               "Data -> LeJEPA teacher -> spiking student. All numbers on held-out time blocks.",
               f'<p class="verdict"><a href="#targets">Targets</a>: {_verdict(targets)}</p>' + _limits(metrics))
    out = run_dir / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(doc, encoding="utf-8")
    return out
