"""benchmarks/student_speed.py: every path it times gives the snntorch loop's spikes and gradients, dense and
low-rank, and a path that does not is reported as a failure (exit 1)."""

import json

from conftest import benchmark

TINY = ["--neurons", "40", "--batch", "2", "--bins", "4", "--units", "12", "--repeats", "1"]


def test_dense_and_low_rank_rows_check_spikes_and_time_the_fused_step(tmp_path):
    out = tmp_path / "speed.json"
    assert benchmark("student_speed").main(TINY + ["--rank", "3", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["rec_rank"] for r in rows] == [0, 3]
    for row in rows:
        assert row["spikes"] > 0 and row["paths"]["fused"]["spikes_identical"]
        assert row["paths"]["fused"]["max_rel_grad_diff"] < 1e-4
    assert rows[1]["fused_speedup_over_dense"] > 0


def test_a_path_whose_spikes_differ_fails_the_run(monkeypatch):
    bench = benchmark("student_speed")
    real = bench._paths

    def broken(net, device):
        paths = real(net, device)
        fused = paths["fused"]

        def run(x):
            out = fused(x)
            return {**out, "spikes": out["spikes"].flip(0)}
        return {**paths, "fused": run}

    monkeypatch.setattr(bench, "_paths", broken)
    assert bench.main(TINY) == 1


def test_a_preset_student_is_timed_with_its_own_rank_and_time_step(tmp_path):
    out = tmp_path / "speed.json"
    assert benchmark("student_speed").main(TINY + ["--config", "student_slow", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["config"], r["rec_rank"]) for r in rows] == [("student_slow", 32)]
    assert rows[0]["lif_steps"] == 4 * 5  # 2 ms steps: 5 per 10 ms bin
    assert rows[0]["spikes"] > 0 and rows[0]["paths"]["fused"]["spikes_identical"]
