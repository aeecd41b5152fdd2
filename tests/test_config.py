"""Typed configs: defaults, YAML files, key=value overrides, and one-line errors for typos and wrong types."""

from dataclasses import dataclass, field

import pytest

from neurojepa.config import config_hash, load_config, read_config, save_config
from neurojepa.errors import InputError


@dataclass
class Optim:
    lr: float = 1e-3
    steps: int = 100


@dataclass
class Run:
    optim: Optim = field(default_factory=Optim)
    name: str = "demo"
    states: list[str] = field(default_factory=list)


def test_overrides_and_file_merge_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.5\nname: fromfile\n")
    cfg = load_config(Run, f, ["optim.steps=7", "name=cli", "states=[active]"])
    assert isinstance(cfg, Run) and isinstance(cfg.optim, Optim)
    assert (cfg.optim.lr, cfg.optim.steps, cfg.name, cfg.states) == (0.5, 7, "cli", ["active"])


def test_typo_names_the_closest_key():
    with pytest.raises(InputError, match=r"unknown config key 'optim.stpes' \(did you mean 'optim.steps'\?\)"):
        load_config(Run, overrides=["optim.stpes=3"])


def test_typo_in_file_names_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("nmae: x\n")
    with pytest.raises(InputError) as err:
        load_config(Run, f)
    assert str(f) in str(err.value) and "'name'" in str(err.value)


def test_wrong_type_is_one_line():
    with pytest.raises(InputError) as err:
        load_config(Run, overrides=["optim.steps=many"])
    assert "optim.steps" in str(err.value) and "\n" not in str(err.value)


def test_saved_config_reads_back_identically_and_hash_tracks_changes(tmp_path):
    cfg = load_config(Run, overrides=["optim.lr=0.25"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = read_config(Run, path)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(Run, overrides=["optim.lr=0.3"])) != config_hash(cfg)


# ------------------------------------------------------------------------ the teacher's options that go together
def test_replay_dims_beyond_embed_dim_is_an_input_error_naming_the_key():
    """loss.replay_dims (31 by default) counts latent dims; with model.embed_dim 16 it is no longer a dim count and
    the model used to fall back silently to tying all 16. Now the key is named; k = D (tie every dim) stays valid,
    and the value does not matter when neither the replay term nor the per-state read-out uses it."""
    from neurojepa.pipeline import load_run_config
    from neurojepa.teacher.config import TeacherConfig, check_choices

    for preset in (None, "fast", "vbn", "student_2ms", "student_large", "student_slow"):  # the shipped configs pass
        check_choices(load_run_config(preset).teacher)
    cfg = TeacherConfig()
    cfg.model.embed_dim = 16
    with pytest.raises(InputError, match=r"^loss\.replay_dims: 31 must be between 1 and model\.embed_dim \(16\)"):
        check_choices(cfg)
    cfg.loss.replay_dims = 16
    check_choices(cfg)
    cfg.loss.replay_dims, cfg.loss.replay_weight, cfg.loss.state_readout = 31, 0.0, False
    check_choices(cfg)


def test_replay_dims_error_is_one_cli_line_before_anything_runs(tmp_path, capsys):
    from neurojepa.cli import main

    assert main(["run", "--out", str(tmp_path / "x"), "teacher.model.embed_dim=16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neurojepa: error: teacher.loss.replay_dims: 31 must be"), err
    assert "model.embed_dim (16)" in err[0]
    assert not (tmp_path / "x").exists()  # refused before simulate and prepare


def test_value_out_of_a_schemas_range_is_one_input_error():
    """A schema's own range check (StudentConfig.__post_init__) reaches the user as an InputError naming the source."""
    from neurojepa.student.config import StudentConfig

    with pytest.raises(InputError, match=r"ff_inhibition must be in \[0, 1\]"):
        load_config(StudentConfig, None, ["ff_inhibition=1.5"])
    assert load_config(StudentConfig, None, ["ff_inhibition=0.5"]).ff_inhibition == 0.5


def test_student_2ms_preset_steps_the_student_at_2_ms():
    """The `student_2ms` preset changes the student only: a 2 ms step (5 sub-steps per 10 ms bin, a one-step
    refractory gate), twice the steps, feed-forward inhibition at 0.5; everything else is the default run."""
    from neurojepa.pipeline import load_run_config
    from neurojepa.student.network import StudentNet

    cfg, default = load_run_config("student_2ms"), load_run_config(None)
    assert (cfg.student.dt, cfg.student.max_steps, cfg.student.ff_inhibition) == (0.002, 300, 0.5)
    assert cfg.teacher == default.teacher and cfg.simulate == default.simulate
    net = StudentNet(5, 2, cfg.student, bin_size=0.01)
    assert (net.substeps, net.n_ref) == (5, 1)


def test_student_large_preset_is_the_low_rank_1280_neuron_student():
    """`student_large` changes the student only: 1,024 E + 256 I neurons, rank-32 recurrence, student_2ms's step,
    balanced feed-forward inhibition, 1,200 steps, a 4 ms refractory period, noise 0.1 and a 3 Hz per-window floor."""
    from neurojepa.pipeline import load_run_config
    from neurojepa.student.network import StudentNet

    cfg, default = load_run_config("student_large"), load_run_config(None)
    s = cfg.student
    assert (s.n_exc, s.n_inh, s.rec_rank, s.dt, s.ff_inhibition, s.max_steps) == (1024, 256, 32, 0.002, 1.0, 1200)
    assert (s.refractory, s.noise_std, s.rate_floor_hz) == (0.004, 0.1, 3.0)
    assert cfg.teacher == default.teacher and cfg.simulate == default.simulate
    net = StudentNet(5, 2, s, bin_size=0.01)
    assert (net.substeps, net.n_ref) == (5, 2)
    assert net.rec.factors()[0].shape == (1280, 64)


def test_student_slow_preset_is_student_large_with_slow_time_scales():
    """`student_slow` is `student_large` plus slow synapses and slow adaptation on half the neurons and 720 ms training
    windows after a 320 ms warm-up (docs/student.md, session 21), stronger input normalisation and penalty bands inside
    the reported 5-20 Hz (session 22), I neurons that adapt (session 23); everything else, the teacher included, as there."""
    from neurojepa.config import to_dict
    from neurojepa.pipeline import load_run_config

    slow, large = load_run_config("student_slow"), load_run_config("student_large")
    changed = {k for k, v in to_dict(slow.student).items() if v != to_dict(large.student)[k]}
    assert changed == {"slow_syn_fraction", "slow_adapt_fraction", "window", "batch_size", "burn_in",
                       "feature_memory_mb", "max_minutes", "input_norm_exponent", "rate_low_exc_hz",
                       "rate_high_exc_hz", "rate_high_inh_hz", "adapt_strength_inh"}
    s = slow.student
    assert (s.slow_syn_fraction, s.slow_adapt_fraction, s.window, s.batch_size, s.burn_in) == (0.5, 0.5, 64, 16, 32)
    # headroom inside the 5-20 Hz band for a state never seen in training (session 22)
    assert (s.input_norm_exponent, s.rate_low_exc_hz, s.rate_high_exc_hz, s.rate_high_inh_hz) == (0.75, 7.0, 17.0, 17.0)
    assert (s.rate_low_hz, s.rate_high_hz) == (5.0, 20.0)  # what frac_in_band reports stays the band
    assert s.adapt_strength_inh == 0.25 and large.student.adapt_strength_inh == 0.0  # I neurons adapt (session 23)
    assert slow.teacher == large.teacher and slow.simulate == large.simulate


def test_a_file_that_is_not_a_mapping_is_one_short_input_error(tmp_path):
    """A YAML list, or a stray text file that YAML reads as one long key, is refused naming the file, in one short
    line (the text is not echoed)."""
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(InputError, match="expected a mapping of config keys"):
        load_config(Run, tmp_path / "list.yaml")
    (tmp_path / "notes.txt").write_text("x" * 500)
    with pytest.raises(InputError) as err:
        load_config(Run, tmp_path / "notes.txt")
    assert "notes.txt" in str(err.value) and len(str(err.value)) < 200


def test_stage_commands_take_a_preset_or_run_config_section(tmp_path):
    """`distill / teach / prepare --config` take a file of the stage's own keys, or a run config or preset whose
    section for that stage they use, with the stage's own key=value overrides on top; typos still name the key."""
    from neurojepa.pipeline import load_stage_config

    s = load_stage_config("student", "student_2ms", ["max_steps=7"])
    assert (s.dt, s.ff_inhibition, s.max_steps) == (0.002, 0.5, 7)
    (tmp_path / "run.yaml").write_text("teacher:\n  train:\n    max_epochs: 3\nstudent:\n  n_exc: 40\n")
    (tmp_path / "own.yaml").write_text("n_exc: 41\n")
    assert load_stage_config("student", tmp_path / "run.yaml").n_exc == 40
    assert load_stage_config("student", tmp_path / "own.yaml").n_exc == 41
    assert load_stage_config("teacher", tmp_path / "run.yaml").train.max_epochs == 3
    assert load_stage_config("prepare", tmp_path / "run.yaml") == load_stage_config("prepare")  # no section: defaults
    with pytest.raises(InputError, match="did you mean 'max_steps'"):
        load_stage_config("student", "student_2ms", ["max_step=7"])
    (tmp_path / "bad.yaml").write_text("student:\n  n_exc: 40\n  dtt: 0.002\n")
    with pytest.raises(InputError, match=r"bad.yaml: unknown config key 'student.dtt'"):
        load_stage_config("student", tmp_path / "bad.yaml")
