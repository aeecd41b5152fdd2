"""Lightning DDP end to end: the multi-session teacher trained by 2 CPU processes (``train.devices=2
train.strategy=ddp``, gloo) in a subprocess, as a user would launch it, finishes a few steps with finite metrics."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from neurojepa.data.prepare import PrepareConfig, prepare_session
from neurojepa.synthetic.simulate import simulate_sessions

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from neurojepa.config import load_config
    from neurojepa.teacher.config import TeacherConfig
    from neurojepa.teacher.multisession import teach_many

    torch.set_num_threads(1)
    out, *dirs = sys.argv[1:]
    cfg = load_config(TeacherConfig, None, ["train.devices=2", "train.strategy=ddp", "train.accelerator=cpu",
                                            "train.steps_per_epoch=3", "train.max_epochs=2", "train.batch_size=16",
                                            "train.progress=false", "eval.baselines=false"])
    teach_many(dirs, out, cfg, full_eval=False)
""")


@pytest.fixture(scope="module")
def two_sessions(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    return [prepare_session(s, root / f"s{i}", PrepareConfig(figure=False, split_block_s=10))
            for i, s in enumerate(simulate_sessions(2, seed=3, n_units=40, minutes=1))]


@pytest.mark.slow
def test_two_process_ddp_training_finishes_with_finite_metrics(two_sessions, tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    # Lightning's ddp launcher re-runs this script for rank 1 (as it re-runs `neurojepa teach` or an srun task)
    proc = subprocess.run([sys.executable, str(script), str(out), *map(str, two_sessions)],
                          capture_output=True, text=True, timeout=150, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())["teacher_multi"]
    assert m["world_size"] == 2
    # 3 steps per epoch on each rank (6 single-session batches per epoch shared out by the rank-sliced sampler)
    assert m["global_step"] == 6 and m["epochs"] == 2
    assert np.isfinite(m["best_val_loss"])
    for s in m["sessions"].values():
        assert np.isfinite(s["gt_r2"]) and np.isfinite(s["rankme"])
    assert (out / "best.ckpt").is_file() and (out / "last.ckpt").is_file()
