"""Allen VBN access against a local HTTP server on 127.0.0.1: resumable downloads and the session table.

The server serves fixture bytes with Range support and can be told, request by request, to drop the connection
mid-file, to ignore Range, or to answer with an error status. It logs every request (method, path, Range header,
and whether the final file already existed at that moment), which is what the tests check against.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import socket

import numpy as np
import pytest
from conftest import serving

from neurojepa.cli import main
from neurojepa.data import allen
from neurojepa.errors import InputError

PAYLOAD = np.random.default_rng(7).integers(0, 256, size=300_001, dtype=np.uint8).tobytes()  # odd size on purpose

SESSIONS_CSV = """\
ecephys_session_id,behavior_session_id,date_of_acquisition,equipment_name,session_type,mouse_id,genotype,sex,\
project_code,age_in_days,unit_count,probe_count,channel_count,structure_acronyms,image_set,\
prior_exposures_to_image_set,session_number,experience_level,prior_exposures_to_omissions,file_id,\
abnormal_histology,abnormal_activity
1044385384,1044408432,2020-08-19 15:36:27,NP.1,EPHYS_1_images_G_3uL_reward,524761,\
Sst-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt,F,NeuropixelVisualBehavior,162,2238.0,6,2304.0,\
"['APN', 'CA1', 'LP', 'VISp', 'VISl', nan]",G,27.0,1.0,Familiar,0.0,1044385384,,
1044594870,1044624428,2020-08-20 14:10:12,NP.1,EPHYS_1_images_H_3uL_reward,524761,\
Sst-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt,F,NeuropixelVisualBehavior,163,1843.0,6,2304.0,\
"['CA1', 'LGd', 'VISp', 'VISam']",H,0.0,2.0,Novel,1.0,1044594870,,
1047969464,1047977240,2020-09-02 13:26:15,NP.0,EPHYS_1_images_G_3uL_reward,509808,wt/wt,M,\
NeuropixelVisualBehavior,154,2399.0,6,2304.0,"['LP', 'MRN', 'VISp', 'VISal', 'VISrl']",G,30.0,1.0,Familiar,0.0,\
1047969464,,
1048189115,1048196054,2020-09-03 12:55:03,NP.0,EPHYS_1_images_H_3uL_reward,509808,wt/wt,M,\
NeuropixelVisualBehavior,155,1989.0,6,2304.0,"['LP', 'VISp', 'VISpm']",H,0.0,2.0,Novel,1.0,1048189115,,
1049273528,1049290548,2020-09-09 14:02:44,NP.1,EPHYS_1_images_G_3uL_reward,527749,\
Vip-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt,M,NeuropixelVisualBehavior,140,2561.0,6,2304.0,\
"['LP', 'VISp', 'VISl']",G,25.0,1.0,Familiar,0.0,1049273528,['VISp'],
1052342277,1052374521,2020-09-23 14:46:59,NP.1,EPHYS_1_images_G_3uL_reward,530862,wt/wt,F,\
NeuropixelVisualBehavior,148,2604.0,6,2304.0,"['LP', 'VISp', 'VISam']",G,28.0,1.0,Familiar,0.0,1052342277,,\
"[7263.0, 7270.0]"
"""


class Server(http.server.ThreadingHTTPServer):
    """Serves ``files`` (URL path -> bytes). ``script`` lists what to do on successive GETs: 'drop' (full-length
    headers, half the body, close), 'stall' (headers, no body, close), anything else serves normally."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.status: dict[str, int] = {}  # path -> forced error status
        self.script: list[str] = []
        self.ignore_range = False
        self.watch = None  # a Path whose existence is logged at each request
        self.log: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def gets(self) -> list[dict]:
        return [r for r in self.log if r["method"] == "GET"]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _prepare(self, method: str):
        srv = self.server
        srv.log.append({"method": method, "path": self.path, "range": self.headers.get("Range"),
                        "final_exists": srv.watch.exists() if srv.watch is not None else None})
        code = srv.status.get(self.path) or (404 if self.path not in srv.files else None)
        if code:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        body, start = srv.files[self.path], 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and not srv.ignore_range and method == "GET":
            start = int(m.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return body[start:]

    def do_HEAD(self):
        self._prepare("HEAD")

    def do_GET(self):
        body = self._prepare("GET")
        if body is None:
            return
        action = self.server.script.pop(0) if self.server.script else "ok"
        if action in ("drop", "stall"):
            self.wfile.write(body[: len(body) // 2] if action == "drop" else b"")
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    yield from serving(Server())


KEY = "visual-behavior-neuropixels/behavior_ecephys_sessions/7/ecephys_session_7.nwb"


def _fetch(server, tmp_path, **kw):
    server.files["/" + KEY] = PAYLOAD
    dest = tmp_path / KEY
    server.watch = dest
    kw.setdefault("retries", 2)
    return allen.download(KEY, dest, base_url=server.url, progress=False, backoff=0.0, timeout=5, **kw), dest


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------ downloader
def test_resume_after_dropped_connection_gives_identical_bytes(server, tmp_path):
    server.script = ["drop"]
    path, dest = _fetch(server, tmp_path)
    assert path == dest and _digest(dest.read_bytes()) == _digest(PAYLOAD)
    gets = server.gets()
    assert len(gets) == 2
    assert gets[0]["range"] is None
    assert gets[1]["range"] == f"bytes={len(PAYLOAD) // 2}-"  # resumed from the bytes on disk, not from zero
    assert not any(r["final_exists"] for r in server.log)  # nothing under the final name while partial
    assert not dest.with_name(dest.name + ".part").exists()


def test_gives_up_keeping_part_file_then_next_run_resumes(server, tmp_path):
    # one drop with progress resets the failure count; two stalls without progress exceed retries=1
    server.script = ["drop", "stall", "stall"]
    with pytest.raises(InputError, match="run again to resume"):
        _fetch(server, tmp_path, retries=1)
    dest = tmp_path / KEY
    part = dest.with_name(dest.name + ".part")
    assert not dest.exists()
    assert part.read_bytes() == PAYLOAD[: len(PAYLOAD) // 2]
    assert len(server.gets()) == 3

    _fetch(server, tmp_path)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.gets()[-1]["range"] == f"bytes={len(PAYLOAD) // 2}-"


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    dest = tmp_path / KEY
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\x00" * 1000)  # stale bytes that must not survive a 200 answer
    server.ignore_range = True
    _fetch(server, tmp_path)
    assert server.gets()[0]["range"] == "bytes=1000-"
    assert dest.read_bytes() == PAYLOAD


def test_complete_file_is_skipped_without_get(server, tmp_path):
    _fetch(server, tmp_path)
    mtime = (tmp_path / KEY).stat().st_mtime_ns
    server.log.clear()
    _fetch(server, tmp_path)
    assert [r["method"] for r in server.log] == ["HEAD"]
    assert (tmp_path / KEY).stat().st_mtime_ns == mtime


def test_wrong_size_final_file_is_replaced(server, tmp_path):
    dest = tmp_path / KEY
    dest.parent.mkdir(parents=True)
    dest.write_bytes(PAYLOAD[:-1])
    _fetch(server, tmp_path)
    assert dest.read_bytes() == PAYLOAD and len(server.gets()) == 1


def test_expected_size_mismatch_is_refused(server, tmp_path):
    with pytest.raises(InputError, match=f"server reports {len(PAYLOAD)} bytes, expected 5"):
        _fetch(server, tmp_path, expected_size=5)
    assert not (tmp_path / KEY).exists() and server.gets() == []


def test_server_error_is_retried_then_reported(server, tmp_path):
    server.status["/" + KEY] = 503
    with pytest.raises(InputError, match="HTTP 503 Service Unavailable") as err:
        _fetch(server, tmp_path, retries=2)
    assert str(err.value).startswith(f"{server.url}/{KEY}: ")
    assert len(server.log) == 3  # HEAD tried 1 + retries times, no GET after it failed
    assert not (tmp_path / KEY).exists()


def test_cli_download_404_exits_2_with_one_line(server, tmp_path, capsys):
    rc = main(["allen", "download", "123", "--cache", str(tmp_path), "--base-url", server.url])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and "HTTP 404 Not Found" in err and "ecephys_session_123.nwb" in err
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no final file, no .part file


def test_cli_download_resumes_into_cache_layout(server, tmp_path, capsys, monkeypatch):
    server.files["/" + allen.session_key(99)] = PAYLOAD
    server.script = ["drop"]
    monkeypatch.setenv("NEUROJEPA_ALLEN_URL", server.url)  # the env var replaces the default bucket
    monkeypatch.setattr(allen.time, "sleep", lambda s: None)  # the CLI uses the default 1 s backoff
    rc = main(["allen", "download", "99", "--cache", str(tmp_path)])
    assert rc == 0
    dest = tmp_path / "visual-behavior-neuropixels/behavior_ecephys_sessions/99/ecephys_session_99.nwb"
    assert dest.read_bytes() == PAYLOAD
    assert capsys.readouterr().out.strip() == str(dest)


def test_bad_session_id_fails_before_network(server, tmp_path, capsys):
    assert main(["allen", "download", "12x", "--cache", str(tmp_path), "--base-url", server.url]) == 2
    assert "12x: not a session id" in capsys.readouterr().err
    assert server.log == []


# ----------------------------------------------------------------------------------------- session table
@pytest.fixture
def bucket(server):
    server.files["/" + allen.SESSIONS_KEY] = SESSIONS_CSV.encode()
    return server


def test_session_table_downloads_once_and_parses(bucket, tmp_path):
    table = allen.session_table(cache=tmp_path, base_url=bucket.url)
    assert (tmp_path / allen.SESSIONS_KEY).read_text() == SESSIONS_CSV
    assert len(table) == 6
    assert table.loc[0, "structure_acronyms"] == ("APN", "CA1", "LP", "VISp", "VISl")  # 'nan' entry dropped
    bucket.log.clear()
    again = allen.session_table(cache=tmp_path, base_url=bucket.url)
    assert bucket.log == [] and again.equals(table)


def _ids(frame) -> list[int]:
    return sorted(int(i) for i in frame["ecephys_session_id"])


def test_select_sessions_filters(bucket, tmp_path):
    table = allen.session_table(cache=tmp_path, base_url=bucket.url)
    # two sessions carry abnormality notes (histology on one, activity on the other): dropped by default
    assert _ids(allen.select_sessions(table)) == [1044385384, 1044594870, 1047969464, 1048189115]
    assert len(allen.select_sessions(table, exclude_abnormal=False)) == 6
    assert _ids(allen.select_sessions(table, areas=["LP", "VISp"])) == [1044385384, 1047969464, 1048189115]
    assert _ids(allen.select_sessions(table, areas=["LP", "LGd"])) == []
    assert _ids(allen.select_sessions(table, genotype="wt")) == [1047969464, 1048189115]
    assert _ids(allen.select_sessions(table, genotype="sst")) == [1044385384, 1044594870]
    assert _ids(allen.select_sessions(table, genotype="Vip-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt",
                                      exclude_abnormal=False)) == [1049273528]
    assert _ids(allen.select_sessions(table, experience="NOVEL")) == [1044594870, 1048189115]
    assert _ids(allen.select_sessions(table, min_units=2238)) == [1044385384, 1047969464]
    assert _ids(allen.select_sessions(table, areas=["VISp"], genotype="wt", experience="familiar",
                                      min_units=2000)) == [1047969464]
    with pytest.raises(InputError, match="familiar"):
        allen.select_sessions(table, experience="old")


def test_cli_sessions_table(bucket, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NEUROJEPA_CACHE", str(tmp_path))  # the env var replaces the default cache
    monkeypatch.setenv("COLUMNS", "200")
    rc = main(["allen", "sessions", "--base-url", bucket.url, "--area", "VISp", "--experience", "familiar",
               "--min-units", "2000"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "1044385384" in out and "1047969464" in out and "1052342277" not in out  # abnormal one excluded
    assert "2 of 6 sessions selected" in out
    assert (tmp_path / allen.SESSIONS_KEY).exists()


def test_cli_sessions_rejects_a_csv_that_is_not_the_session_table(server, tmp_path, capsys):
    server.files["/" + allen.SESSIONS_KEY] = b"a,b\n1,2\n"
    rc = main(["allen", "sessions", "--cache", str(tmp_path), "--base-url", server.url])
    err = capsys.readouterr().err
    assert rc == 2 and "missing column(s) ecephys_session_id" in err and err.count("\n") == 1


def test_unwritable_cache_is_an_input_error(server, tmp_path, capsys):
    server.files["/" + allen.session_key(5)] = PAYLOAD
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("a file where the cache directory should be")
    assert main(["allen", "download", "5", "--cache", str(not_a_dir), "--base-url", server.url]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert server.gets() == []


def test_cached_file_is_used_when_server_unreachable(tmp_path):
    dest = tmp_path / KEY
    dest.parent.mkdir(parents=True)
    dest.write_bytes(PAYLOAD)
    with socket.socket() as bound:  # bound but not listening: connections to it are refused at once
        bound.bind(("127.0.0.1", 0))
        unreachable = f"http://127.0.0.1:{bound.getsockname()[1]}"
        assert allen.download(KEY, dest, base_url=unreachable, progress=False, retries=1, backoff=0.0) == dest
        assert dest.read_bytes() == PAYLOAD
        with pytest.raises(InputError, match="connection failed"):
            allen.download(KEY, tmp_path / "other.nwb", base_url=unreachable, progress=False, retries=1,
                           backoff=0.0)
    assert not (tmp_path / "other.nwb").exists()
