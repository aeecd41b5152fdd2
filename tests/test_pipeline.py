"""The main job end to end on a tiny simulated session: stages, skipping, resuming after a kill, refusing to mix
configs, one-line errors, a non-VBN recording with its limits reported, and the science check of a whole run
(reduced under `make test`; the default preset, every target met, under `make test-full`)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neurojepa.cli import main
from neurojepa.errors import InputError
from neurojepa.pipeline import load_run_config, run
from neurojepa.report.targets import NA, PASS, evaluate_targets

from conftest import sized

# the `fast` preset (configs/fast.yaml), smaller still: the plumbing is tested here, not the science
PRESET = "fast"
SIM = ["simulate.units=60", "simulate.minutes=2"]
TRAIN = ["teacher.train.steps_per_epoch=5", "teacher.train.batch_size=8", "student.max_steps=10", "student.val_every=5"]
TINY = [*SIM, *TRAIN]
CLI = ["--config", PRESET]  # the same config from the command line


def tiny_config(*more: str):
    return load_run_config(PRESET, [*TINY, *more])


def science_run_config():
    """The run the science check judges: the tiny run under `make test`, the default preset (what `make demo` runs:
    the built-in ~400-unit session, 7 x 50 teacher steps, 150 student steps, the ablation) under `make test-full`."""
    return sized(tiny_config(), load_run_config(None))


def _mtimes(out: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in (out / ".stages").glob("*.json")}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "demo"
    run(out, tiny_config())
    return out


@pytest.mark.slow
def test_run_writes_every_stage_merged_metrics_and_report(tiny_run):
    for stage in ("simulate", "prepare", "teacher", "student"):
        rec = json.loads((tiny_run / ".stages" / f"{stage}.json").read_text())
        assert rec["complete"] is True and (tiny_run / stage).is_dir()
    m = json.loads((tiny_run / "metrics.json").read_text())
    assert {"run", "data", "teacher", "student"} <= set(m)
    assert m["data"]["units_kept"] == json.loads((tiny_run / "prepare" / "qc.json").read_text())["units_kept"]
    assert m["teacher"]["embed_dim"] == 32 and "gt_r2" in m["teacher"]  # the simulator has ground truth
    assert m["student"]["dale_violations"] == 0
    assert m["run"]["limits"] == []  # nothing missing on the simulated session
    html = (tiny_run / "report.html").read_text()
    assert "Targets" in html and "http://" not in html and "https://" not in html
    assert (tiny_run / "run.yaml").is_file()


@pytest.mark.slow
def test_second_run_skips_finished_stages(tiny_run, capsys):
    before, metrics_before = _mtimes(tiny_run), json.loads((tiny_run / "metrics.json").read_text())
    assert main(["run", "--out", str(tiny_run), *CLI, *TINY]) == 0
    err = capsys.readouterr().err
    assert err.count("up to date, skipped") == 4
    assert _mtimes(tiny_run) == before
    assert json.loads((tiny_run / "metrics.json").read_text())["teacher"] == metrics_before["teacher"]


@pytest.mark.slow
def test_other_config_in_same_dir_is_refused_unless_forced(tiny_run, capsys):
    changed = [*TINY, "student.max_steps=12"]  # the last override of a key wins
    assert main(["run", "--out", str(tiny_run), *CLI, *changed]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different config (student.max_steps)" in err[0] and "--force" in err[0]
    before = _mtimes(tiny_run)
    assert main(["run", "--out", str(tiny_run), "--force", *CLI, *changed]) == 0
    after = _mtimes(tiny_run)
    # only the changed stage (and what depends on it) reran
    assert {k for k in after if after[k] != before[k]} == {"student.json"}
    assert json.loads((tiny_run / "metrics.json").read_text())["student"]["global_step"] == 12


def test_config_typo_and_bad_type_are_one_line(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "x"), "teacher.train.lrr=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'teacher.train.lr'" in err[0]
    assert main(["run", "--out", str(tmp_path / "x"), "student.max_steps=lots"]) == 2
    assert "student.max_steps" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_killed_run_resumes_to_completion(tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "neurojepa.cli", "run", "--out", str(out), *CLI, *TINY,
           "teacher.train.max_epochs=12", "teacher.train.patience=100"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    ckpt = out / "teacher" / "last.ckpt"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed during training"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rec = json.loads((out / ".stages" / "teacher.json").read_text())
    assert rec["complete"] is False and not (out / "metrics.json").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "teacher: resuming" in done.stderr and "prepare: up to date, skipped" in done.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["teacher"]["epochs"] == 12 and m["student"]["dale_violations"] == 0


@pytest.mark.slow
def test_any_nwb_recording_runs_with_its_limits_reported(real_nwb, tmp_path):
    out = run(tmp_path / "real", load_run_config(PRESET, [*TRAIN, "states_from=epochs"]), real_nwb)
    m = json.loads((out / "metrics.json").read_text())
    limits = " ".join(m["run"]["limits"])
    assert "no ground-truth latents" in limits and "one state" in limits and "no image presentations" in limits
    assert "gt_r2" not in m["teacher"]  # not faked
    assert m["data"]["units_kept"] == 3
    assert "Limits of this recording" in (out / "report.html").read_text()


def test_missing_input_is_one_line(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.nwb"), "--out", str(tmp_path / "o")]) == 2
    assert "input file not found" in capsys.readouterr().err


def test_presets_resolve_and_unknown_preset_is_refused():
    fast = load_run_config("fast")
    assert fast.simulate.units == 80
    assert tiny_config().simulate.units == 60 and tiny_config().teacher.train.max_epochs == fast.teacher.train.max_epochs
    with pytest.raises(InputError, match="presets: default, fast, student_2ms, student_large, student_slow, vbn"):
        load_run_config("fastest")


def test_failed_run_before_any_stage_leaves_no_directory(real_nwb, tmp_path, capsys):
    import shutil

    import h5py

    bad = tmp_path / "nan.nwb"
    shutil.copy(real_nwb, bad)
    with h5py.File(bad, "r+") as f:
        f["units/spike_times"][5] = float("nan")
    out = tmp_path / "never"
    assert main(["run", str(bad), "--out", str(out), "states_from=epochs"]) == 2
    err = capsys.readouterr().err
    assert "NaN or infinite spike times" in err and str(bad) in err
    assert not out.exists()  # nothing that looks like a run


@pytest.mark.slow
def test_failed_stage_says_why_and_the_next_run_starts_cleanly(tmp_path):
    """A run that fails in the teacher stage says so in status.json; a corrected rerun in the same directory is not
    refused for its different config, reruns the failed stage and finishes. Its log (stderr redirected to a file,
    as in batch jobs) has no carriage-return bars and one line per teacher epoch."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "neurojepa.cli", "run", "--out", str(out), *CLI, *TINY]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    # a hardware option the Trainer refuses: checked when the teacher stage builds its Trainer (the config's choices
    # and combinations are checked before any stage runs, so they cannot make a stage fail)
    bad = subprocess.run([*cmd, "teacher.train.accelerator=bogus"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert bad.returncode == 2 and "train.accelerator: 'bogus' is not one of" in bad.stderr
    assert "Traceback" not in bad.stderr
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and status["stage"] == "teacher" and "bogus" in status["error"]
    assert not (out / "metrics.json").exists() and not (out / "report.html").exists()
    good = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert good.returncode == 0, good.stderr[-2000:]
    assert "simulate: up to date, skipped" in good.stderr and "teacher: running" in good.stderr
    done = json.loads((out / "status.json").read_text())
    assert done["state"] == "complete"
    # this attempt's stages (simulate and prepare completed in the failed attempt and were skipped) with wall time
    # and a sampled peak below the whole run's
    assert set(done["stages"]) == {"teacher", "student", "report"}
    assert all(0 < st["peak_mb"] <= done["peak_mb"] and st["seconds"] >= 0 for st in done["stages"].values())
    assert "teacher: done in" in good.stderr and "peak memory" in good.stderr
    log = good.stdout + good.stderr
    assert "\r" not in log and len(log.splitlines()) < 200
    assert "teacher epoch 1/2: step 5" in log and "teacher epoch 2/2: step 10" in log and "student step" in log


@pytest.mark.slow
@pytest.mark.science
def test_whole_run_science(full, request, tmp_path):
    """Science check of a whole run. Reduced (`make test`, the tiny run above: 60 units, 2-min blocks, 10 teacher
    and 10 student steps): every headline number of the report is produced (only the ablation's ratio is not: the
    `fast` preset switches the ablation off), the student keeps Dale's law and a chance-level null, and both stages
    learn something real (measured: teacher gt_r2 0.36, student held-out CCA 0.24 vs null 0.007). Full size
    (`make test-full`): the default preset, the run `make demo` makes, meets every target of the report
    (docs/budget.md: about 5 minutes on 2 cores)."""
    out = run(tmp_path / "default", science_run_config()) if full else request.getfixturevalue("tiny_run")
    m = json.loads((out / "metrics.json").read_text())
    rows = {r["name"]: r for r in evaluate_targets(m)}
    if full:
        assert all(r["status"] == PASS for r in rows.values()), {k: r for k, r in rows.items() if r["status"] != PASS}
        return
    assert [k for k, r in rows.items() if r["status"] == NA] == ["CCA constrained / unconstrained"]
    assert rows["dale_violations"]["status"] == PASS and rows["cca_null_mean"]["status"] == PASS
    assert m["teacher"]["gt_r2"] > 0.2 and m["student"]["cca_heldout_mean"] > 0.15
