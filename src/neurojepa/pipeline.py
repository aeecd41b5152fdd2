"""The main job: simulate (when no input is given) -> prepare -> teach -> distill -> report, resumable.

Each stage writes ``DIR/<stage>/`` and a record ``DIR/.stages/<stage>.json`` holding the stage's *key*: a hash of
its own config section, of the keys of the stages it reads from, and of its input file. A rerun

- skips a stage whose record says complete with the same key (so a second ``make demo`` only rebuilds the report);
- resumes a stage whose record says started but not complete with the same key (an interrupted training run
  continues from its last checkpoint);
- reruns a stage whose key changed (and so everything downstream of it).

``DIR/run.yaml`` holds the resolved config of the run; a different config in an existing run directory is refused
unless ``force=True`` (``--force``), so results of two configs never mix silently.

``DIR/status.json`` says how the last attempt ended: ``{"state": "complete" | "failed" | "interrupted", "stage",
"error", "seconds", "stages", "peak_mb"}``: ``stages`` holds each stage this attempt ran (and the report) as
``{"seconds", "peak_mb"}``, its wall time and peak resident memory (sampled 20 times a second,
runtime.MemoryWatch); ``peak_mb`` is the process's peak over the whole attempt (VmHWM).
A failed run leaves nothing that looks like a finished run: when the attempt created the directory and no stage
completed, the directory is removed; otherwise ``status.json`` says failed, at which stage and why, and the next
``neurojepa run`` there starts that stage afresh (with a corrected config too: stages whose key did not change are
kept, the others rerun, so two configs still never mix).

Imports flow one way: this module sits above ``synthetic``, ``data``, ``teacher``, ``student`` and ``report`` and
wires them together, none of them imports it. E.g. the prepare stage hands the report layer's
:func:`~neurojepa.report.qc_figure.plot_qc` to the data layer's ``prepare`` as ``draw_qc``, so ``prepare/qc.png``
is written inside the stage's atomic directory without ``data`` importing ``report``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .config import as_overrides, config_hash, load_config, save_config, to_dict
from .data.prepare import PrepareConfig
from .errors import InputError, atomic_path
from .runtime import MemoryWatch, peak_memory_mb
from .student.config import StudentConfig
from .teacher.config import TeacherConfig, check_choices
from .version import __version__

log = logging.getLogger(__name__)

STAGES = ("simulate", "prepare", "teacher", "student", "report")


@dataclass
class SimulateConfig:
    """The built-in default data (used when ``neurojepa run`` gets no INPUT)."""

    seed: int = 0  # the simulated session is a function of this seed
    units: Optional[int] = None  # default: the preset's (~400)
    minutes: Optional[float] = None  # per task block; default: the preset's
    preset: str = "default"  # default | vbn (full size)


@dataclass
class RunConfig:
    """Everything ``neurojepa run`` does, in one typed tree (``--config FILE.yaml`` and ``key=value`` overrides).

    train_states / test_states: the cross-state experiment. Empty lists mean every state of the prepared data.
    With ``train_states=[active] test_states=[passive]`` teacher and student train on active blocks only and are
    scored within the training state and across, on held-out blocks.
    """

    train_states: list[str] = field(default_factory=list)  # states teacher and student train on (empty: all)
    test_states: list[str] = field(default_factory=list)  # states they are scored on (empty: all)
    states_from: Optional[str] = None  # TABLE[:COLUMN] for a non-VBN recording
    unconstrained_ablation: bool = True  # also train the student without Dale/homeostasis (for the 80% target)
    report: bool = True  # write report.html at the end
    simulate: SimulateConfig = field(default_factory=SimulateConfig)  # the built-in session (no INPUT given)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)  # QC, binning, labels, splits
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # the LeJEPA teacher
    student: StudentConfig = field(default_factory=StudentConfig)  # the spiking student


PRESETS_DIR = Path(__file__).parent / "configs"


def preset_path(name_or_file: str | Path) -> Path:
    """A YAML file as given, or a preset by name (``default``, ``fast``, ``vbn``, ``student_2ms``, ``student_large``,
    ``student_slow``: ``neurojepa/configs/NAME.yaml``)."""
    p = Path(name_or_file)
    if p.is_file() or p.suffix in (".yaml", ".yml"):
        return p
    preset = PRESETS_DIR / f"{p.name}.yaml"
    if preset.is_file():
        return preset
    names = ", ".join(sorted(q.stem for q in PRESETS_DIR.glob("*.yaml")))
    raise InputError(name_or_file, f"no such config file or preset (presets: {names})")


def load_run_config(file: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Resolve a :class:`RunConfig` from a preset name or YAML file and ``key=value`` overrides (typos named)."""
    return load_config(RunConfig, None if file is None else preset_path(file), overrides, where="run config")


def load_stage_config(section: str, file: str | Path | None = None, overrides: Sequence[str] = ()):
    """The config of one stage (``section``: ``prepare``, ``teacher`` or ``student``) for the stage commands
    (``neurojepa prepare / teach / distill --config FILE``). FILE holds either that stage's own keys, or it is a run
    config or a preset by name (``student_2ms``, ``vbn``, ...: top-level sections such as ``student:``), whose
    ``section`` it takes (defaults where the file has none; the other sections are checked and ignored).
    ``key=value`` overrides are the stage's own keys either way."""
    schema = type(getattr(RunConfig(), section))
    if file is None:
        return load_config(schema, None, overrides)
    path = preset_path(file)
    try:
        top = OmegaConf.load(path) if path.is_file() else None
    except Exception:  # not YAML: load_config names the file and the problem
        top = None
    run_sections = {"simulate", "prepare", "teacher", "student"} - {f.name for f in fields(schema)}
    if not isinstance(top, DictConfig) or not run_sections & set(top.keys()):
        return load_config(schema, path, overrides)
    run = load_config(RunConfig, path, where="run config")
    return load_config(schema, None, as_overrides(to_dict(getattr(run, section))) + list(overrides))


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _input_fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass
class Stage:
    name: str
    key: str
    run: Callable[[bool], None]  # run(resume)


class Pipeline:
    """The stages of one run directory. Use :func:`run` unless you need the pieces."""

    def __init__(self, out: str | Path, cfg: RunConfig, input_path: str | Path | None = None, console=None):
        self.out = Path(out)
        self.console = console
        self.cfg = cfg
        self.input_path = None if input_path is None else Path(input_path)
        if self.input_path is not None and not self.input_path.is_file():
            raise InputError(self.input_path, "input file not found")
        self.dirs = {s: self.out / s for s in STAGES if s != "report"}

    # ------------------------------------------------------------------------------------------ bookkeeping
    def _record_path(self, stage: str) -> Path:
        return self.out / ".stages" / f"{stage}.json"

    def record(self, stage: str) -> dict | None:
        p = self._record_path(stage)
        return json.loads(p.read_text()) if p.is_file() else None

    def _write_record(self, stage: str, key: str, complete: bool, seconds: float | None = None,
                      peak_mb: float | None = None) -> None:
        rec = {"stage": stage, "key": key, "complete": complete, "seconds": seconds, "peak_mb": peak_mb,
               "version": __version__}
        with atomic_path(self._record_path(stage)) as tmp:
            tmp.write_text(json.dumps(rec, indent=2))

    # ------------------------------------------------------------------------------------------ the stages
    def stages(self) -> list[Stage]:
        c = self.cfg
        out: list[Stage] = []
        if self.input_path is None:
            sim_key = _hash("simulate", to_dict(c.simulate))
            out.append(Stage("simulate", sim_key, self._simulate))
            upstream = sim_key
        else:
            upstream = _hash("input", _input_fingerprint(self.input_path))
        prep_key = _hash("prepare", to_dict(c.prepare), c.states_from, upstream)
        out.append(Stage("prepare", prep_key, self._prepare))
        teach_key = _hash("teacher", to_dict(c.teacher), c.train_states, c.test_states, prep_key)
        out.append(Stage("teacher", teach_key, self._teach))
        stud_key = _hash("student", to_dict(c.student), c.train_states, c.test_states, c.unconstrained_ablation,
                         teach_key)
        out.append(Stage("student", stud_key, self._distill))
        return out

    @property
    def nwb_path(self) -> Path:
        return self.input_path if self.input_path is not None else self.dirs["simulate"] / "session.nwb"

    def _simulate(self, resume: bool) -> None:
        from .synthetic.simulate import simulate_to_nwb

        s = self.cfg.simulate
        self.dirs["simulate"].mkdir(parents=True, exist_ok=True)
        save_config(s, self.dirs["simulate"] / "config.yaml")
        simulate_to_nwb(self.nwb_path, seed=s.seed, n_units=s.units, minutes=s.minutes, preset=s.preset)
        from .data.inspect import print_summary
        from .data.nwb_read import open_session

        with open_session(self.nwb_path) as session:  # what `neurojepa inspect` shows: the data at a glance
            print_summary(session, self.console)

    def _prepare(self, resume: bool) -> None:
        from .data.prepare import prepare
        from .report.qc_figure import plot_qc

        prepare(self.nwb_path, self.dirs["prepare"], self.cfg.prepare, states_from=self.cfg.states_from,
                draw_qc=plot_qc)

    def _state_overrides(self) -> dict:
        """The cross-state experiment's keywords for teach/distill (none when training and scoring on all states)."""
        if not (self.cfg.train_states or self.cfg.test_states):
            return {}
        return {"train_states": list(self.cfg.train_states), "test_states": list(self.cfg.test_states)}

    def _teach(self, resume: bool) -> None:
        from .teacher.train import teach

        resume = resume and (self.dirs["teacher"] / "last.ckpt").is_file()  # interrupted before a checkpoint: restart
        teach(self.dirs["prepare"], self.dirs["teacher"], self.cfg.teacher, resume=resume,
              **self._state_overrides())

    def _distill(self, resume: bool) -> None:
        from .student.train import distill

        resume = resume and (self.dirs["student"] / "last.ckpt").is_file()
        distill(self.dirs["prepare"], self.dirs["teacher"], self.dirs["student"], self.cfg.student, resume=resume,
                unconstrained=self.cfg.unconstrained_ablation, **self._state_overrides())

    # ------------------------------------------------------------------------------------------ results
    def limits(self) -> list[str]:
        """What the prepared recording cannot support; those metrics are reported as not available, never faked."""
        from .data.dataset import PreparedSession

        ps = PreparedSession.load(self.dirs["prepare"])
        try:
            out = []
            if ps.gt_latents is None:
                out.append("no ground-truth latents: gt_r2 and gt_r2_cross_state are not available")
            states = sorted(set(np.asarray(ps.labels["state"]).astype(str)) - {""})
            if len(states) < 2:
                out.append(f"one state ({', '.join(states) or 'none'}): cross-state metrics (cobps_cross_state, "
                           "forecast_r2_cross_state, gt_r2_cross_state, cross-state decoding) are not available")
            if not (ps.labels["image"].astype(str) != "").any():
                out.append("no image presentations: image and change decoding are not available")
            if ps.n_units < 10:
                out.append(f"only {ps.n_units} units after QC: latents and co-smoothing rest on very few neurons")
            return out
        finally:
            ps.close()

    def merge_metrics(self) -> Path:
        """``DIR/metrics.json`` = {"data": qc.json, "teacher": ..., "student": ...} (sections present so far)."""
        doc: dict = {"run": {"config_hash": config_hash(self.cfg), "version": __version__,
                             "input": str(self.nwb_path)}}
        qc = self.dirs["prepare"] / "qc.json"
        if qc.is_file():
            doc["data"] = json.loads(qc.read_text())
            doc["run"]["limits"] = self.limits()
        for stage in ("teacher", "student"):
            m = self.dirs[stage] / "metrics.json"
            if m.is_file():
                doc[stage] = json.loads(m.read_text()).get(stage)
        path = self.out / "metrics.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(doc, indent=2, default=str))
        return path


def run_status(out: str | Path) -> dict | None:
    """``DIR/status.json`` of a run directory (None before the first attempt ended)."""
    p = Path(out) / "status.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _write_status(out: Path, state: str, stage: str | None = None, error: str | None = None,
                  seconds: float | None = None, stages: dict | None = None) -> None:
    # the kernel's high-water mark, or a stage's sampled peak if higher: per-thread RSS counters are synced
    # lazily, so a sample taken by the watcher thread can exceed VmHWM read later by a few hundred kB
    peak = max([peak_memory_mb(), *(st.get("peak_mb") or 0.0 for st in (stages or {}).values())])
    doc = {"state": state, "stage": stage, "error": error, "seconds": seconds, "stages": stages or {},
           "peak_mb": peak, "version": __version__}
    with atomic_path(out / "status.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=2))


def _check_run_dir(out: Path, cfg: RunConfig, input_path: Path | None, force: bool) -> None:
    """Refuse to mix two configs in one run directory unless forced (or the run there failed)."""
    saved = out / "run.yaml"
    if not saved.is_file() or (run_status(out) or {}).get("state") == "failed":
        return
    old = OmegaConf.to_container(OmegaConf.load(saved), resolve=True)
    new = {"input": None if input_path is None else str(input_path.resolve()), "config": to_dict(cfg)}
    if old != new and not force:
        changed = sorted(_diff_keys(old.get("config", {}), new["config"]))
        if old.get("input") != new["input"]:
            changed.insert(0, "INPUT")
        shown = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
        raise InputError(out, f"holds a run with a different config ({shown}); use --force to rerun "
                              "the changed stages there, or choose another --out")


def _diff_keys(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = []
        for k in sorted(set(a) | set(b)):
            keys += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return keys
    return [] if a == b else [prefix.rstrip(".")]


def run(out: str | Path, cfg: RunConfig | None = None, input_path: str | Path | None = None, *, force: bool = False,
        console=None) -> Path:
    """Run (or resume, or skip through) the whole pipeline into ``out``; returns ``out``.

    input_path: an NWB file; None simulates the default session (``cfg.simulate``).
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    cfg = cfg or RunConfig()
    out = Path(out)
    ipath = None if input_path is None else Path(input_path)
    check_choices(cfg.teacher, prefix="teacher.")  # a bad combination fails now, not after simulate and prepare
    _check_run_dir(out, cfg, ipath, force)
    pipe = Pipeline(out, cfg, ipath, console=console)
    created = not out.exists()
    failed_before = (run_status(out) or {}).get("state") == "failed"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "run.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml({"input": None if ipath is None else str(ipath.resolve()),
                                          "config": to_dict(cfg)}))
    t_run, completed, current = time.perf_counter(), 0, None
    done: dict = {}  # {stage: {"seconds", "peak_mb"}} of the stages this attempt ran (peak: resident, per stage)
    try:
        for stage in pipe.stages():
            current = stage.name
            rec = pipe.record(stage.name)
            if rec and rec["complete"] and rec["key"] == stage.key:
                console.print(f"[dim]- {stage.name}: up to date, skipped[/dim]")
                completed += 1
                continue
            # a stage that failed last time starts afresh; one that was interrupted resumes
            resume = bool(rec and not rec["complete"] and rec["key"] == stage.key and not failed_before)
            console.print(f"[bold]- {stage.name}[/bold]: {'resuming' if resume else 'running'}")
            pipe._write_record(stage.name, stage.key, complete=False)
            t0 = time.perf_counter()
            with MemoryWatch() as mem:
                stage.run(resume)
                # Lightning's trainer and module refer to each other, so a stage's session (1.2 GB of counts at
                # full size) would stay alive into the next stage until a full collection happens to run
                gc.collect()
            seconds, peak = round(time.perf_counter() - t0, 1), mem.peak_mb
            pipe._write_record(stage.name, stage.key, complete=True, seconds=seconds, peak_mb=peak)
            done[stage.name] = {"seconds": seconds, "peak_mb": peak}
            completed += 1
            console.print(f"  {stage.name}: done in {seconds:.1f} s, peak memory {peak / 1024:.2f} GB (sampled)")
        current = "report"
        t0 = time.perf_counter()
        with MemoryWatch() as mem:
            metrics = pipe.merge_metrics()
            console.print(f"- metrics: {metrics}")
            if cfg.report:
                from .report.build import build_report

                console.print(f"- report: {build_report(out)}")
        done["report"] = {"seconds": round(time.perf_counter() - t0, 1), "peak_mb": mem.peak_mb}
    except Exception as err:
        if created and completed == 0:  # nothing of value: leave nothing that looks like a run
            shutil.rmtree(out, ignore_errors=True)
        else:
            why = str(err) if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
            _write_status(out, "failed", current, " ".join(why.split()), round(time.perf_counter() - t_run, 1), done)
        raise
    except BaseException:  # Ctrl-C or a kill signal turned into an exception: resumable as it stands
        _write_status(out, "interrupted", current, None, round(time.perf_counter() - t_run, 1), done)
        raise
    _write_status(out, "complete", None, None, round(time.perf_counter() - t_run, 1), done)
    return out
