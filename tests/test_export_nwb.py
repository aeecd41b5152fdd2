"""``neurojepa export-nwb``: a finished run's results as NWB, valid under pynwb's validator, read back with pynwb
and compared with what the run saved; the student's saved spikes are the ones behind its firing statistics."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pynwb import NWBHDF5IO, validate

from neurojepa.cli import main
from neurojepa.data.dataset import PreparedSession, read_table
from neurojepa.errors import InputError
from neurojepa.export_nwb import QC_COLUMNS, export_nwb
from neurojepa.pipeline import load_run_config, run
from neurojepa.student.spikes_file import read_student_spikes

pytestmark = pytest.mark.slow  # every test reads one whole (tiny) run of the pipeline

# the `fast` preset, smaller still; the science is not the point here
TINY = ["simulate.units=60", "simulate.minutes=2", "report=false",
        "teacher.train.max_epochs=1", "teacher.train.steps_per_epoch=3", "teacher.train.batch_size=8",
        "teacher.eval.baselines=false", "teacher.model.embed_dim=8", "teacher.loss.replay_dims=8",
        "teacher.model.width=16",
        "student.n_exc=32", "student.n_inh=8", "student.max_steps=4", "student.batch_size=4", "student.window=16",
        "student.val_every=4", "student.readout_refit_steps=2", "student.eval_spike_chunks=4"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    run(out, load_run_config("fast", TINY))
    return out


@pytest.fixture(scope="module")
def fresh(tiny_run, tmp_path_factory) -> Path:
    return export_nwb(tiny_run, tmp_path_factory.mktemp("nwb") / "results.nwb")


def test_fresh_file_is_valid_and_holds_exactly_what_the_run_saved(tiny_run, fresh):
    assert validate(path=str(fresh)) == []
    with np.load(tiny_run / "teacher" / "latents.npz") as z:
        latents, t_start, bin_size = z["latents"], float(z["t_start"]), float(z["bin_size"])
    with np.load(tiny_run / "student" / "readout.npz") as z:
        readout = z["readout"]
    spikes = read_student_spikes(tiny_run / "student" / "spikes.npz")
    ps = PreparedSession.load(tiny_run / "prepare")
    qc_units = read_table(ps.h5["qc_units"])
    ps.close()
    units_kept = json.loads((tiny_run / "prepare" / "qc.json").read_text())["units_kept"]

    with NWBHDF5IO(str(fresh), "r") as io:
        nwb = io.read()
        mod = nwb.processing["neurojepa"]
        assert "neurojepa 0." in mod.description and (tiny_run / "run.yaml").read_text() in mod.description
        for name, saved in (("teacher_latents", latents), ("student_readout", readout)):
            ts = mod[name]
            assert np.array_equal(ts.data[:], saved) and ts.data.dtype == np.float32
            assert ts.starting_time == t_start and ts.rate == pytest.approx(1 / bin_size, rel=1e-12)

        units = nwb.units  # every unit of the recording, with the prepare stage's decision
        ids = units.id[:]
        assert np.array_equal(np.sort(ids), np.sort(qc_units.index.to_numpy()))
        reason = np.asarray(units["neurojepa_qc_reason"][:], dtype=str)
        kept = np.asarray(units["neurojepa_qc_kept"][:], dtype=bool)
        assert kept.sum() == units_kept and np.array_equal(kept, reason == "")
        assert list(reason) == list(qc_units.loc[ids, "reason"].astype(str))
        assert set(QC_COLUMNS) <= set(units.colnames) and "spike_times" not in units.colnames

        student = mod["student_units"]
        assert len(student) == spikes.n_neurons
        expected = spikes.spike_times()
        intervals = spikes.chunk_intervals()
        for i in range(spikes.n_neurons):
            assert np.array_equal(student.get_unit_spike_times(i), expected[i])
            assert np.array_equal(student.get_unit_obs_intervals(i), intervals)
        assert np.asarray(student["excitatory"][:]).sum() == spikes.n_exc
        assert sum(len(t) for t in expected) == spikes.n_spikes > 0


def test_saved_spikes_are_the_held_out_ones_behind_the_firing_statistics(tiny_run):
    """spikes.npz names test-block chunks; re-simulating them gives the same spikes bit for bit, and their rates give
    the metrics' median rate."""
    from neurojepa.student.evaluate import firing_statistics
    from neurojepa.student.train import load_student

    sp = read_student_spikes(tiny_run / "student" / "spikes.npz")
    ps = PreparedSession.load(tiny_run / "prepare")
    split, counts = np.asarray(ps.split).astype(str), ps.load_counts()
    ps.close()
    for s in sp.chunk_start_bin:
        assert (split[s:s + sp.chunk_bins] == "test").all()
    rates = np.bincount(sp.spike_neuron, minlength=sp.n_neurons) / (len(sp.chunk_start_bin) * sp.chunk_bins
                                                                     * sp.bin_size)
    m = json.loads((tiny_run / "student" / "metrics.json").read_text())["student"]
    assert np.median(rates) == pytest.approx(m["rate_hz_median"], rel=1e-9)

    net = load_student(tiny_run / "student")
    again: dict = {}
    test_bins = (np.arange(len(split)) >= net.cfg.burn_in) & (split == "test")
    firing_statistics(net, counts, test_bins, net.cfg, record=again)
    assert np.array_equal(again["chunk_start_bin"], sp.chunk_start_bin)
    assert np.array_equal(again["spikes"], sp.dense())


def test_into_copy_keeps_the_recording_and_adds_the_results(tiny_run, fresh, tmp_path):
    out = export_nwb(tiny_run, tmp_path / "copy.nwb", into_copy=True)
    assert validate(path=str(out)) == []
    with NWBHDF5IO(str(tiny_run / "simulate" / "session.nwb"), "r") as io_in, NWBHDF5IO(str(out), "r") as io:
        src, nwb = io_in.read(), io.read()
        assert np.array_equal(nwb.units.id[:], src.units.id[:])
        assert np.array_equal(nwb.units["spike_times"].data[:], src.units["spike_times"].data[:])
        assert set(QC_COLUMNS) <= set(nwb.units.colnames)
        assert nwb.units["neurojepa_qc_kept"][:].sum() == json.loads(
            (tiny_run / "prepare" / "qc.json").read_text())["units_kept"]
        assert set(nwb.processing["neurojepa"].data_interfaces) == {"teacher_latents", "student_readout",
                                                                    "student_units"}
        assert "ground_truth" in nwb.processing  # the recording's own content is still there

    # a run whose input is an exported file: --into-copy refuses to add a second neurojepa module
    again = tmp_path / "again"
    shutil.copytree(tiny_run, again, ignore=shutil.ignore_patterns("*.ckpt", "logs", "simulate"))
    (again / "run.yaml").write_text((tiny_run / "run.yaml").read_text().replace("input: null", f"input: {out}"))
    with pytest.raises(InputError, match="already holds a 'neurojepa' processing module"):
        export_nwb(again, tmp_path / "twice.nwb", into_copy=True)
    assert not (tmp_path / "twice.nwb").exists()


def test_cli_writes_the_file_and_refuses_what_is_not_a_finished_run(tiny_run, tmp_path, capsys):
    assert main(["export-nwb", str(tiny_run), "--out", str(tmp_path / "r.nwb")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "r.nwb").is_file()

    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "run.yaml").write_text((tiny_run / "run.yaml").read_text())
    for run_dir, problem in ((tmp_path, "not a run directory"), (tmp_path / "half", "not a finished run")):
        assert main(["export-nwb", str(run_dir), "--out", str(tmp_path / "x.nwb")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and problem in err[0]
    assert main(["export-nwb", str(tiny_run), "--out", str(tiny_run / "simulate" / "session.nwb")]) == 2
    assert "input recording" in capsys.readouterr().err
    assert not (tmp_path / "x.nwb").exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_run_without_saved_spikes_exports_the_rest_and_says_so(tiny_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old, ignore=shutil.ignore_patterns("*.ckpt", "logs", "simulate"))
    (old / "student" / "spikes.npz").unlink()
    out = export_nwb(old, tmp_path / "old.nwb")
    with NWBHDF5IO(str(out), "r") as io:
        mod = io.read().processing["neurojepa"]
        assert set(mod.data_interfaces) == {"teacher_latents", "student_readout"}
        assert "spikes are not included" in mod.description
