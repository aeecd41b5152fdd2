"""Values two stages share have one home and travel with the run: the student decodes over the flash window the
teacher's decoding used (recorded in its results), and the rate band of the student's config is the one its metrics
score and the report draws."""

import numpy as np
import pandas as pd
import pytest
import torch

from neurojepa.errors import InputError
from neurojepa.metrics import spiking
from neurojepa.student import evaluate as student_evaluate
from neurojepa.student.config import StudentConfig
from neurojepa.student.evaluate import evaluate_student
from neurojepa.student.network import StudentNet
from neurojepa.synthetic.toy import ToySession, synthetic_session

torch.set_num_threads(1)


def _student(**kw):
    cfg = StudentConfig(n_exc=24, n_inh=6, burn_in=2, eval_chunk=40, eval_warmup=4, eval_spike_chunks=4, **kw)
    counts, lat, split = synthetic_session(n_units=20, n_bins=2000, d=3, seed=0, block=100)
    torch.manual_seed(0)
    net = StudentNet(20, 3, cfg, bin_size=0.01)  # synthetic_session's 10 ms bins
    net.calibrate_bias(torch.from_numpy(counts[:120].reshape(4, 30, 20).astype(np.float32)))
    return net, counts, lat, split


def _flash_labels(n: int) -> pd.DataFrame:
    """States and a 250 ms flash every 750 ms: enough for evaluate_student to decode."""
    t = np.arange(n)
    return pd.DataFrame({"state": np.where(t < n // 2, "active", "passive"),
                         "time_since_flash": np.where(t % 75 < 25, (t % 75) * 0.01, np.nan)})


def test_teacher_decoding_records_its_window():
    from neurojepa.teacher.evaluate import score_latents, session_context

    toy = ToySession(n_bins=1500, n_units=30, d=3, seed=0)
    z = np.random.default_rng(0).standard_normal((toy.n_bins, 4)).astype(np.float32)
    ctx = session_context(toy, toy.load_counts(), np.zeros(0, np.int64), 120.0)
    dec = score_latents(z, ctx, collapse=False)["decoding"]
    assert dec["flash_window_ms"] == 120.0 and dec["within"]


def test_student_decodes_over_the_teachers_window(monkeypatch):
    net, counts, lat, split = _student()
    seen = []

    def fake_report(z, labels, split, bin_size, window_ms, **kw):
        seen.append(window_ms)
        return {"within": {}, "cross": {}, "flash_window_ms": window_ms}

    monkeypatch.setattr(student_evaluate, "decoding_report", fake_report)
    labels = _flash_labels(len(counts))
    m, _ = evaluate_student(net, counts, lat, split, net.cfg, labels, {"within": {}, "flash_window_ms": 120.0})
    assert seen == [120.0] and m["decoding"]["flash_window_ms"] == 120.0
    # no window known: an error naming it, not a silent 250 ms; a window that differs from the teacher's: refused
    with pytest.raises(InputError, match="^flash_window_ms: the student's decoding needs"):
        evaluate_student(net, counts, lat, split, net.cfg, labels)
    with pytest.raises(InputError, match="^flash_window_ms: 250 ms differs from the 120 ms"):
        evaluate_student(net, counts, lat, split, net.cfg, labels, {"flash_window_ms": 120.0}, flash_window_ms=250.0)
    # labels without flashes need no window (nothing to decode), as before
    m, _ = evaluate_student(net, counts, lat, split, net.cfg, labels[["state"]])
    assert m["decoding"] == {}


def test_rate_band_of_the_config_is_scored_recorded_and_drawn():
    from neurojepa.report.figures import rate_histogram
    from neurojepa.report.targets import evaluate_targets, rate_band

    net, counts, lat, split = _student(rate_low_hz=2.0, rate_high_hz=40.0)
    m, _ = evaluate_student(net, counts, lat, split, net.cfg)
    rates = m.pop("_report")["rates_hz"]
    assert m["rate_band_hz"] == [2.0, 40.0]
    assert m["frac_in_band"] == spiking.frac_in_band(rates, 2.0, 40.0)
    assert rate_band(m) == (2.0, 40.0)
    row = next(r for r in evaluate_targets({"student": m}) if r["name"] == "frac_in_band")
    assert "2-40 Hz" in row["target"]
    _, names = rate_histogram(rates, np.arange(len(rates)) < 24, rate_band(m)).axes[0].get_legend_handles_labels()
    assert "2-40 Hz band" in names
    # a run that did not record its band: no band drawn (never a made-up 5-20 Hz)
    assert rate_band({}) is None
    _, names = rate_histogram(rates, np.arange(len(rates)) < 24, None).axes[0].get_legend_handles_labels()
    assert not any("band" in n for n in names)
