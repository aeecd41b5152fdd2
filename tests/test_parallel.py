"""`prepare` over several recordings on a 2-process Dask LocalCluster: same output as one at a time, and a broken
file is reported on its own line without losing the others."""

import h5py
import numpy as np
import pytest

from neurojepa.cli import main
from neurojepa.data.parallel import output_dirs, prepare_many
from neurojepa.data.prepare import PrepareConfig, prepare
from neurojepa.errors import InputError
from neurojepa.synthetic.simulate import simulate_sessions_to_nwb

CFG = ["split_block_s=10"]  # with the QC figure: the CLI hands plot_qc to every Dask worker


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Three tiny sessions (30 units x 1 min blocks) and a truncated copy of one of them."""
    d = tmp_path_factory.mktemp("nwb")
    files = simulate_sessions_to_nwb(d, 3, seed=1, n_units=30, minutes=1)
    data = files[0].read_bytes()
    broken = d / "broken.nwb"
    broken.write_bytes(data[: len(data) // 2])
    return files, broken


def test_two_workers_prepare_every_good_session_and_report_the_broken_one(inputs, tmp_path, capsys):
    files, broken = inputs
    args = [str(f) for f in (files[0], broken, files[1], files[2])]
    rc = main(["prepare", *args, "--out", str(tmp_path / "root"), "--workers", "2", *CFG])
    out, err = capsys.readouterr()
    assert rc == 2
    failed = [line for line in err.splitlines() if line.startswith("neurojepa: error:")]
    assert len(failed) == 1 and str(broken) in failed[0]
    assert "3 of 4 sessions prepared" in out
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["session_00", "session_01", "session_02"]
    assert all((tmp_path / "root" / s / "qc.png").is_file() for s in ("session_00", "session_01", "session_02"))
    # the same bytes of counts as preparing one file in this process
    ref = prepare(files[1], tmp_path / "ref", PrepareConfig(figure=False, split_block_s=10))
    with h5py.File(ref / "dataset.h5") as a, h5py.File(tmp_path / "root/session_01/dataset.h5") as b:
        assert np.array_equal(a["counts"][()], b["counts"][()]) and np.array_equal(a["split"][()], b["split"][()])
        assert a.attrs["session_id"] == b.attrs["session_id"] == "sim-default-set1-s01"


def test_sequential_many_returns_paths_and_error_lines(inputs, tmp_path):
    files, broken = inputs
    res = prepare_many([files[2], broken], tmp_path, PrepareConfig(figure=False))
    assert list(res) == [str(files[2]), str(broken)]
    assert res[str(files[2])] == tmp_path / "session_02" and (tmp_path / "session_02/dataset.h5").is_file()
    assert isinstance(res[str(broken)], str) and "\n" not in res[str(broken)]
    assert not (tmp_path / "broken").exists()


def test_bad_requests_fail_before_any_work(tmp_path):
    with pytest.raises(InputError, match="both be prepared"):
        output_dirs(["a/x.nwb", "b/x.nwb"], tmp_path)
    with pytest.raises(InputError, match="workers"):
        prepare_many(["a.nwb"], tmp_path, workers=0)
    with pytest.raises(InputError, match="bin_size"):
        prepare_many(["a.nwb"], tmp_path, PrepareConfig(bin_size=0))
    assert not any(tmp_path.iterdir())
