"""`neurojepa prepare`: qc.json, counts against an independent histogram, splits, provenance, bad input."""

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from neurojepa.cli import main
from neurojepa.data.dataset import PreparedSession
from neurojepa.data.prepare import PrepareConfig, assign_splits, prepare, prepare_session
from neurojepa.data.qc import QCConfig
from neurojepa.data.session import GroundTruth, InMemorySpikes, Session, SpikeTrains
from neurojepa.report.qc_figure import plot_qc

STATE_S = 100.0  # s per task block in the test session


def make_session(seed: int = 0, n_units: int = 40) -> Session:
    """Active [0, 100) s, gray [100, 110) s, passive [110, 210) s; Poisson units with Allen-style metrics, some
    spikes exactly on 10 ms edges, NaN metrics, noise units; 3 ground-truth latents at 4 ms."""
    rng = np.random.default_rng(seed)
    t_end = 2 * STATE_S + 10.0
    ids = np.arange(n_units, dtype=np.int64) * 3 + 7
    rates = rng.lognormal(1.0, 1.2, n_units).clip(0.02, 60)
    trains = []
    for r in rates:
        t = rng.uniform(0, t_end, rng.poisson(r * t_end))
        t = np.concatenate([t, np.round(rng.uniform(0, t_end, 5), 2)])  # on the 10 ms grid (edges)
        trains.append(np.sort(t))
    units = pd.DataFrame({
        "area": rng.choice(["VISp", "LP", "CA1"], n_units),
        "cell_type": rng.choice(["rs", "fs"], n_units),
        "quality": rng.choice(["good", "noise"], n_units, p=[0.85, 0.15]),
        "isi_violations": rng.exponential(0.2, n_units),
        "amplitude_cutoff": rng.choice([0.01, 0.05, 0.2, 0.5], n_units, p=[0.5, 0.3, 0.1, 0.1]),
        "presence_ratio": rng.uniform(0.85, 0.99, n_units),
        "firing_rate": [len(t) / t_end for t in trains],
    }, index=pd.Index(ids, name="unit_id"))
    units.loc[ids[3], "presence_ratio"] = np.nan
    epochs = pd.DataFrame({"start_time": [0.0, STATE_S, STATE_S + 10], "stop_time": [STATE_S, STATE_S + 10, t_end],
                           "state": ["active", "gray", "passive"], "block": [0, 1, 5],
                           "stimulus_name": ["images", "spontaneous", "images"]})
    onsets = np.r_[np.arange(0, STATE_S, 0.75), np.arange(STATE_S + 10, t_end, 0.75)]
    active = onsets < STATE_S
    flashes = pd.DataFrame({"start_time": onsets, "stop_time": onsets + 0.25, "stimulus_block": np.where(active, 0, 5),
                            "stimulus_name": "Natural_Images_G",
                            "image_name": rng.choice(["im_a", "im_b"], len(onsets)),
                            "is_change": rng.random(len(onsets)) < 0.1, "omitted": False, "active": active})
    gray = pd.DataFrame({"start_time": [STATE_S], "stop_time": [STATE_S + 10], "stimulus_block": [1],
                         "stimulus_name": ["spontaneous"], "active": [False]})
    stimuli = pd.concat([flashes, gray]).sort_values("start_time", kind="mergesort", ignore_index=True)
    lat = rng.normal(size=(int(t_end / 0.004), 3)).astype(np.float32)
    load = rng.normal(size=(n_units, 3)).astype(np.float32)
    truth = {"latents": lat, "loadings": load, "baseline_hz": rates,
             "state_gain": {"active": np.ones(n_units), "passive": np.ones(n_units)},
             "state_offset": {"active": np.zeros(n_units), "passive": np.zeros(n_units)},
             "state_remix": {"active": load, "passive": load}}
    gt = GroundTruth(truth.__getitem__, latent_dt=0.004, latent_t0=0.0, n_latents=3, unit_ids=ids)
    return Session(f"test-{seed}", units, InMemorySpikes(SpikeTrains.from_list(ids, trains)), epochs,
                   stimuli=stimuli, ground_truth=gt)


def expected_kept(units: pd.DataFrame) -> list[int]:
    """Independent QC of the default config, straight from the documented thresholds."""
    ok = ((units["quality"] == "good") & (units["isi_violations"] < 0.5) & (units["amplitude_cutoff"] < 0.1)
          & (units["presence_ratio"] > 0.9) & (units["firing_rate"] > 0.1))  # NaN compares False: dropped
    return list(units.index[ok.to_numpy()])


FAST = PrepareConfig(split_block_s=10.0, chunk_s=7.0, figure=False)  # chunks that do not divide the range


@pytest.fixture(scope="module")
def session():
    return make_session()


@pytest.fixture(scope="module")
def prepared(session, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "d"
    cfg = PrepareConfig(split_block_s=10.0, chunk_s=7.0, figure=True)
    prepare_session(session, out, cfg, draw_qc=plot_qc)  # the figure comes from the report layer, as in the CLI
    return out


def test_qc_json_has_the_promised_keys_and_counts(prepared, session):
    qc = json.loads((prepared / "qc.json").read_text())
    for key in ("units_total", "units_kept", "dropped", "filters_not_applied", "per_area", "bin_ms", "n_bins",
                "states", "splits", "checks", "summary"):
        assert key in qc, key
    kept = expected_kept(session.units)
    assert qc["units_total"] == 40 and qc["units_kept"] == len(kept)
    assert qc["units_total"] - qc["units_kept"] == sum(qc["dropped"].values())
    assert qc["filters_not_applied"] == []
    assert sum(qc["per_area"].values()) == len(kept)
    assert qc["bin_ms"] == 10 and qc["n_bins"] == 21000
    assert qc["states"] == {"active": 10000, "gray": 1000, "passive": 10000}
    names = {c["name"] for c in qc["checks"]}
    assert names == {"spike_times_sorted_finite", "duplicate_spikes", "population_silent_gaps", "block_timing",
                     "physiological_rates"}
    assert (prepared / "qc.png").stat().st_size > 10_000
    assert {p.name for p in prepared.iterdir()} == {"qc.json", "dataset.h5", "config.yaml", "provenance.json", "qc.png"}


def test_counts_equal_per_unit_histograms(prepared, session):
    ps = PreparedSession.load(prepared)
    assert list(ps.unit_ids) == expected_kept(session.units)
    edges = ps.t_start + np.arange(ps.n_bins + 1) * ps.bin_size
    counts = ps.load_counts()
    assert counts.dtype == np.uint8
    trains = session.spike_times(ps.unit_ids)
    for j in range(len(ps.unit_ids)):
        t = trains[j]
        ref, _ = np.histogram(t[t < edges[-1]], bins=edges)
        np.testing.assert_array_equal(counts[:, j], ref)
    assert counts.sum() > 10_000  # the test would be empty otherwise
    # ground truth: the 4 ms latent sample holding each bin centre (10 k + 5 ms), in integer arithmetic
    k = np.arange(ps.n_bins)
    np.testing.assert_array_equal(ps.gt_latents, session.ground_truth.latents[(10 * k + 5) // 4])
    assert list(ps.units.columns[:2]) == ["area", "cell_type"] and ps.units.index.name == "unit_id"


def test_splits_are_contiguous_disjoint_blocks_inside_states(prepared):
    ps = PreparedSession.load(prepared)
    state = ps.labels["state"].to_numpy()
    blocks = [b for name in ("train", "val", "test") for b in ps.qc["splits"][name]]
    covered = np.zeros(ps.n_bins, int)
    for name in ("train", "val", "test"):
        for b in ps.qc["splits"][name]:
            a, e = b["bin_start"], b["bin_stop"]
            assert 0 < e - a <= 1000  # at most split_block_s = 10 s
            assert set(state[a:e]) == {b["state"]}
            assert set(ps.split[a:e]) == {name}
            assert b["t_start"] == pytest.approx(ps.t_start + a * ps.bin_size)
            covered[a:e] += 1
    assert covered.max() == 1 and covered.sum() == ps.n_bins  # disjoint, and every bin of every state is in one
    assert len(blocks) == 21
    for s in ("active", "passive"):  # 10 blocks: 7/1/2
        per = [sum(b["state"] == s for b in ps.qc["splits"][n]) for n in ("train", "val", "test")]
        assert per == [7, 1, 2]
    with h5py.File(prepared / "dataset.h5") as h5:
        assert h5["counts"].compression == "gzip" and h5["counts"].chunks is not None


def test_split_assignment_is_reproducible_and_seeded():
    state = np.array(["a"] * 500 + ["b"] * 300 + ["a"] * 200, dtype=object)
    sel = np.ones(len(state), bool)
    c1, b1 = assign_splits(state, sel, 0.01, 0.5, (0.6, 0.2, 0.2), seed=3)
    c2, b2 = assign_splits(state, sel, 0.01, 0.5, (0.6, 0.2, 0.2), seed=3)
    c3, _ = assign_splits(state, sel, 0.01, 0.5, (0.6, 0.2, 0.2), seed=4)
    np.testing.assert_array_equal(c1, c2)
    assert b1 == b2 and not np.array_equal(c1, c3)
    # blocks are whole 50-bin runs that never cross the state change at bins 500 and 800
    assert all(b["bin_stop"] - b["bin_start"] == 50 for b in b1)
    assert len({b["split"] for b in b1}) == 3


def test_provenance_and_config_roundtrip(prepared):
    prov = json.loads((prepared / "provenance.json").read_text())
    assert prov["code"]["neurojepa"] and "created_utc" in prov and prov["input_sha256"] is None  # no file
    ps = PreparedSession.load(prepared)
    assert ps.config["split_block_s"] == 10.0 and ps.config["qc"]["isi_violations_max"] == 0.5


def test_real_file_prepares_with_metric_filters_not_applied(real_nwb, tmp_path):
    out = tmp_path / "d2"
    assert main(["prepare", str(real_nwb), "--out", str(out), "figure=false"]) == 0
    qc = json.loads((out / "qc.json").read_text())
    assert set(qc["filters_not_applied"]) == {"quality == 'good'", "isi_violations < 0.5", "amplitude_cutoff < 0.1",
                                              "presence_ratio > 0.9"}
    assert qc["filters_computed"] == {"firing_rate": qc["filters_computed"]["firing_rate"]}
    assert qc["units_total"] == 3 and qc["units_kept"] == 3
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["input_sha256"] == hashlib.sha256(real_nwb.read_bytes()).hexdigest()
    ps = PreparedSession.load(out)
    assert 21354 - 10 <= ps.load_counts().sum() <= 21354  # only the last partial bin is dropped


@pytest.fixture(scope="module")
def sim_nwb(tmp_path_factory):
    from neurojepa.data.nwb_write import write_session_nwb

    return write_session_nwb(make_session(seed=1, n_units=12), tmp_path_factory.mktemp("nwb") / "sim.nwb")


@pytest.mark.parametrize("args, needle", [
    (["bin_size=0"], "bin_size"),
    (["bin_size=nan"], "bin_size"),
    (["bin_size=-0.01"], "bin_size"),
    (["t_start=50", "t_stop=50"], "empty"),
    (["t_start=500", "t_stop=600"], "states"),  # after the recording: no bin in any state
    (["states=[active,running]"], "running"),
    (["qc.min_rate_hz=1e9"], "firing_rate > 1e+09"),
    (["bin_sise=0.02"], "did you mean 'bin_size'"),
    (["qc.isi_violation_max=1"], "unknown config key"),
])
def test_bad_input_one_line_exit_2_nothing_written(sim_nwb, tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    rc = main(["prepare", str(sim_nwb), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("neurojepa: error:") and needle in err
    assert list(tmp_path.iterdir()) == []  # no output directory, no temporary left behind


def test_failure_leaves_an_existing_output_untouched(sim_nwb, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prepare", str(sim_nwb), "--out", str(out), "figure=false", "split_block_s=20"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "kept" in capsys.readouterr().out
    assert main(["prepare", str(sim_nwb), "--out", str(out), "states=[nope]"]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_prepare_from_nwb_equals_prepare_from_session(sim_nwb, tmp_path):
    cfg = PrepareConfig(split_block_s=20.0, figure=False, qc=QCConfig(presence_ratio_min=None))
    a = PreparedSession.load(prepare(sim_nwb, tmp_path / "a", cfg))
    b = PreparedSession.load(prepare_session(make_session(seed=1, n_units=12), tmp_path / "b", cfg))
    np.testing.assert_array_equal(a.load_counts(), b.load_counts())
    np.testing.assert_array_equal(a.split, b.split)
    assert list(a.unit_ids) == list(b.unit_ids)
    prov = json.loads((a.path / "provenance.json").read_text())
    assert prov["input_sha256"] == hashlib.sha256(Path(sim_nwb).read_bytes()).hexdigest()
