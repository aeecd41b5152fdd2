"""benchmarks/real_recordings.py end to end on a tiny simulated recording: one table per file with the teacher and
the NLB baselines scored by the same code, and the teacher / smoothing ratio (issue 16)."""

import json

import numpy as np
import pytest

from conftest import benchmark


def _bench():
    return benchmark("real_recordings")


def test_real_recordings_benchmark_prints_the_teacher_beside_the_baselines(tmp_path, capsys):
    from neurojepa.synthetic.simulate import simulate_to_nwb

    nwb = simulate_to_nwb(tmp_path / "tiny.nwb", seed=0, n_units=40, minutes=2.0, preset="generic")
    _bench().main([str(nwb), "--out", str(tmp_path / "out"), "--split-block-s", "15", "train.max_epochs=1",
                   "train.steps_per_epoch=4", "train.batch_size=16"])
    out = capsys.readouterr().out
    assert "teacher / smoothing cobps:" in out and "smoothing" in out and "PCA" in out
    report = json.loads((tmp_path / "out" / "real_recordings.json").read_text())
    table = {r["method"]: r for r in report["results"]["tiny.nwb"]["teacher"]["table"]}
    assert {"teacher", "smoothing", "PCA", "factor analysis"} <= set(table)
    for row in table.values():
        assert np.isfinite(row["cobps"]["mean"]) and np.isfinite(row["forecast_r2"]["mean"])
    ratio = report["results"]["tiny.nwb"]["teacher"]["cobps_over_smoothing"]
    base = table["smoothing"]["cobps"]["mean"]
    if base > 0:
        assert ratio == pytest.approx(table["teacher"]["cobps"]["mean"] / base)


def test_real_recordings_benchmark_refuses_a_missing_file(tmp_path):
    with pytest.raises(SystemExit):
        _bench().main([str(tmp_path / "nope.nwb"), "--out", str(tmp_path / "out")])
