"""NWB over HTTP without a download: `inspect URL` and `prepare URL` against a local server on 127.0.0.1.

The server serves a directory with Range support (``bytes=a-b`` and ``bytes=a-``) and counts the body bytes and
requests it served, so the tests measure what crossed the network, not what the client says it asked for.
"""

from __future__ import annotations

import http.server
import json
import pickle
import re
import socket
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import serving

from neurojepa.cli import main
from neurojepa.data.nwb_read import open_session
from neurojepa.data.prepare import PrepareConfig, prepare
from neurojepa.errors import InputError
from neurojepa.synthetic.simulate import simulate_to_nwb


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), Handler)
        self.root, self.served, self.requests, self.ignore_range = root, 0, 0, False

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"

    def reset(self) -> None:
        self.served = self.requests = 0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        path = srv.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if m and not srv.ignore_range:
            a = int(m.group(1))
            b = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            body = data[a:b + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"v1"')
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # a client that refuses a 200 answer hangs up on it
            return
        srv.served += len(body)
        srv.requests += 1


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A simulated session large enough that spike times are most of the file (200 units, ~20 min: ~10 MB)."""
    root = tmp_path_factory.mktemp("served")
    simulate_to_nwb(root / "sim.nwb", seed=0, n_units=200, minutes=5)
    (root / "notes.txt").write_text("not an NWB file\n" * 100)
    with h5py.File(root / "plain.h5", "w") as f:
        f["x"] = np.arange(10)
    return root


@pytest.fixture
def server(files):
    yield from serving(Server(files))


def test_inspect_url_reads_a_small_fraction_of_the_file(server, files, capsys):
    size = (files / "sim.nwb").stat().st_size
    assert main(["inspect", server.url("sim.nwb")]) == 0
    out = capsys.readouterr().out
    assert "total: 200 units" in out and "spike times: not checked (remote file" in out
    fraction = server.served / size
    print(f"\ninspect over HTTP: {server.served:,} of {size:,} bytes ({fraction:.1%}) in {server.requests} requests")
    # what it reads: metadata, tables, the Units index and the running-speed samples (loaded with the session);
    # never the spike times (most of the file) nor the ground-truth latents
    assert fraction < 0.2 and server.requests < 40


def test_open_session_url_equals_local_file(server, files):
    local = open_session(files / "sim.nwb")
    with open_session(server.url("sim.nwb")) as remote:
        assert remote.session_id == local.session_id and remote.source == server.url("sim.nwb")
        assert remote.units.equals(local.units) and remote.epochs.equals(local.epochs)
        assert remote.stimuli.equals(local.stimuli)
        a, b = remote.spike_times(t_start=100.0, t_stop=160.0), local.spike_times(t_start=100.0, t_stop=160.0)
        assert np.array_equal(a.times, b.times) and np.array_equal(a.offsets, b.offsets) and len(a.times) > 1000
        copy = pickle.loads(pickle.dumps(remote.spikes))  # what a Dask worker of `prepare --workers` receives
        assert np.array_equal(copy.read(t_start=100.0, t_stop=160.0).times, a.times)
        copy.close()
    local.close()


def test_prepare_url_gives_the_same_dataset_as_the_local_file(server, files, tmp_path):
    cfg = PrepareConfig(figure=False, split_block_s=30.0)
    prepare(files / "sim.nwb", tmp_path / "local", cfg)
    server.reset()
    prepare(server.url("sim.nwb"), tmp_path / "remote", cfg)
    with h5py.File(tmp_path / "local" / "dataset.h5") as a, h5py.File(tmp_path / "remote" / "dataset.h5") as b:
        names = []
        a.visit(lambda n: names.append(n) if isinstance(a[n], h5py.Dataset) else None)
        assert "counts" in names and "gt_latents" in names and len(names) > 10
        for n in names:
            x, y = a[n][()], b[n][()]
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), n
    qa, qb = (json.loads((tmp_path / d / "qc.json").read_text()) for d in ("local", "remote"))
    assert qa == qb
    prov = json.loads((tmp_path / "remote" / "provenance.json").read_text())
    size = (files / "sim.nwb").stat().st_size
    assert prov["input"] == server.url("sim.nwb") and prov["input_sha256"] is None
    assert prov["input_remote"] == {"url": server.url("sim.nwb"), "size": size, "etag": '"v1"', "last_modified": None}
    print(f"\nprepare over HTTP: {server.served:,} of {size:,} bytes ({server.served / size:.1%}) "
          f"in {server.requests} requests")
    assert server.served < 1.5 * size  # read in place, each block about once


def test_s3_url_of_the_allen_bucket_maps_to_its_https_endpoint(server, files, monkeypatch):
    key = "visual-behavior-neuropixels/behavior_ecephys_sessions/7/ecephys_session_7.nwb"
    (files / Path(key)).parent.mkdir(parents=True, exist_ok=True)
    (files / Path(key)).write_bytes((files / "sim.nwb").read_bytes())
    monkeypatch.setenv("NEUROJEPA_ALLEN_URL", server.url("").rstrip("/"))  # the bucket's endpoint, here local
    with open_session(f"s3://visual-behavior-neuropixels-data/{key}") as s:
        assert s.n_units == 200 and server.requests > 0
    from neurojepa.data.allen import https_url

    assert https_url("s3://other-bucket/a/b.nwb") == "https://other-bucket.s3.amazonaws.com/a/b.nwb"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name, match", [
    ("missing.nwb", "HTTP 404"),
    ("notes.txt", "not an HDF5 file, so not NWB"),
    ("plain.h5", "HDF5 file but not NWB"),
])
def test_bad_urls_are_one_line_errors_naming_the_url(server, name, match, capsys):
    url = server.url(name)
    with pytest.raises(InputError, match=match) as err:
        open_session(url)
    assert str(err.value).startswith(url) and "\n" not in str(err.value)
    assert main(["inspect", url]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"neurojepa: error: {url}: ") and match in line


def test_unreachable_server_and_no_range_support(server, monkeypatch):
    from neurojepa.data import remote

    monkeypatch.setattr(remote, "BACKOFF_S", 0.0)
    url = f"http://127.0.0.1:{_closed_port()}/sim.nwb"
    with pytest.raises(InputError, match=r"unreachable \(connection failed"):
        open_session(url)
    server.ignore_range = True
    with pytest.raises(InputError, match="does not serve byte ranges"):
        open_session(server.url("sim.nwb"))
