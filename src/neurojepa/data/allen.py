"""Allen Visual Behavior Neuropixels (VBN) access without AllenSDK: the session table and a resumable downloader.

AllenSDK pins numpy<1.24 and pandas 1.5 and cannot live next to numpy 2 / torch 2.x, so this module talks to the
public S3 bucket directly over HTTPS with the standard library (``urllib``), and the NWB files it fetches are read
by :mod:`neurojepa.data.nwb_read` with pynwb.

Where things live
    Bucket ``https://visual-behavior-neuropixels-data.s3.us-west-2.amazonaws.com`` (override: ``base_url=`` /
    ``--base-url`` / env ``NEUROJEPA_ALLEN_URL``). Keys, as AllenSDK's ``VisualBehaviorNeuropixelsProjectCache``
    uses them::

        visual-behavior-neuropixels/project_metadata/ecephys_sessions.csv
        visual-behavior-neuropixels/behavior_ecephys_sessions/<id>/ecephys_session_<id>.nwb

    The local cache (``cache=`` / ``--cache`` / env ``NEUROJEPA_CACHE``, default ``~/.cache/neurojepa/allen``)
    mirrors the keys, so ``<cache>/<key>`` is the file.

Session table
    :func:`session_table` reads ``ecephys_sessions.csv`` (downloaded once, then read from the cache) with the
    columns documented by the Allen Institute: ``ecephys_session_id``, ``behavior_session_id``,
    ``date_of_acquisition``, ``mouse_id``, ``genotype``, ``sex``, ``age_in_days``, ``unit_count``, ``probe_count``,
    ``channel_count``, ``structure_acronyms`` (a Python-list string such as ``"['APN', 'CA1', 'VISp']"``),
    ``image_set`` (G/H), ``session_number`` (1/2), ``experience_level`` ('Familiar'/'Novel'),
    ``prior_exposures_to_image_set``, ``prior_exposures_to_omissions``, ``file_id``, ``abnormal_histology``,
    ``abnormal_activity`` (empty when nothing was noted). ``structure_acronyms`` is parsed into a tuple of str.
    :func:`select_sessions` filters it like AllenSDK does: by default sessions with a noted histological or
    activity abnormality are dropped (103 of 153 sessions remain in the release).

Downloader design (:func:`download`)
    * One HEAD request first gives the size. A final file that already has that size is kept (no GET).
    * Bytes go to ``<dest>.part`` (a fixed name, not :func:`~neurojepa.errors.atomic_path`'s random one, because
      a later run must find it to resume). Only a complete, size-checked file is renamed to ``dest``
      (``os.replace``, atomic on one file system), so the final name never holds a partial file.
    * A dropped connection or a 5xx/408/429 answer (:mod:`neurojepa.data.http`) is retried with exponential
      backoff; each retry resumes with ``Range: bytes=<bytes on disk>-``. The retry budget counts consecutive
      failures *without progress*, so a 3 GB file survives many drops as long as each attempt moves forward. When
      the budget is spent the ``.part`` file stays on disk and the next run resumes from it.
    * A server that ignores Range (answers 200 instead of 206) restarts the file from zero; a 206 whose
      Content-Range does not start at the requested offset is treated the same way.
    * Size check: the bytes written must equal the Content-Length / Content-Range total, the HEAD size and
      ``expected_size`` whenever these are known; a mismatch deletes the ``.part`` file and raises InputError.
    * Other HTTP errors (403, 404, ...) raise ``InputError(url, "HTTP 404 Not Found")`` at once; nothing is written.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import time
import urllib.error
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from ..errors import InputError
from .http import CONTENT_RANGE, NETWORK_ERRORS, Retryable, reason, request

log = logging.getLogger(__name__)

ALLEN_BUCKET = "visual-behavior-neuropixels-data"  # s3://ALLEN_BUCKET/KEY is read over https (https_url)
DEFAULT_BASE_URL = f"https://{ALLEN_BUCKET}.s3.us-west-2.amazonaws.com"
DEFAULT_CACHE = Path("~/.cache/neurojepa/allen")
PROJECT_PREFIX = "visual-behavior-neuropixels"
SESSIONS_KEY = f"{PROJECT_PREFIX}/project_metadata/ecephys_sessions.csv"

# Columns that select_sessions and the CLI table rely on; a csv without them is not the VBN session table.
REQUIRED_COLUMNS = ("ecephys_session_id", "genotype", "experience_level", "unit_count", "structure_acronyms",
                    "abnormal_histology", "abnormal_activity")

_CHUNK = 1 << 20  # bytes per read: large enough for throughput, small enough for a responsive progress bar


# ------------------------------------------------------------------------------------------- locations
def resolve_base_url(base_url: str | None = None) -> str:
    """``base_url`` if given, else env ``NEUROJEPA_ALLEN_URL``, else the public VBN bucket; no trailing slash."""
    return (base_url or os.environ.get("NEUROJEPA_ALLEN_URL") or DEFAULT_BASE_URL).rstrip("/")


def resolve_cache(cache: str | os.PathLike | None = None) -> Path:
    """``cache`` if given, else env ``NEUROJEPA_CACHE``, else ``~/.cache/neurojepa/allen`` (user-expanded)."""
    return Path(cache or os.environ.get("NEUROJEPA_CACHE") or DEFAULT_CACHE).expanduser()


def session_key(session_id: int | str) -> str:
    """Bucket key of one session's NWB file (spikes, stimuli, behaviour; LFP lives in separate probe files)."""
    sid = _session_id(session_id)
    return f"{PROJECT_PREFIX}/behavior_ecephys_sessions/{sid}/ecephys_session_{sid}.nwb"


def _session_id(session_id: int | str) -> int:
    try:
        sid = int(str(session_id).strip())
    except ValueError:
        raise InputError(str(session_id), "not a session id (expected an integer ecephys_session_id)") from None
    if sid <= 0:
        raise InputError(str(session_id), "not a session id (expected a positive integer)")
    return sid


def https_url(url: str) -> str:
    """An ``s3://BUCKET/KEY`` URL as the https URL that serves it without credentials; other URLs unchanged.

    The public VBN bucket (``s3://visual-behavior-neuropixels-data/...``) maps to :func:`resolve_base_url` (its
    https endpoint, or ``$NEUROJEPA_ALLEN_URL``); any other bucket to ``https://BUCKET.s3.amazonaws.com/KEY``,
    which serves public objects only."""
    m = re.match(r"^s3://([^/]+)/(.+)$", url, flags=re.IGNORECASE)
    if not m:
        if url.lower().startswith("s3://"):
            raise InputError(url, "not an s3://BUCKET/KEY URL")
        return url
    bucket, key = m.group(1), m.group(2)
    if bucket == ALLEN_BUCKET:
        return f"{resolve_base_url()}/{key}"
    return f"https://{bucket}.s3.amazonaws.com/{key}"


def _url(url_or_key: str, base_url: str | None) -> str:
    if re.match(r"^[a-z][a-z0-9+.-]*://", url_or_key, flags=re.IGNORECASE):
        return url_or_key
    return f"{resolve_base_url(base_url)}/{url_or_key.lstrip('/')}"


# ---------------------------------------------------------------------------------------- session table
def session_table(cache: str | os.PathLike | None = None, base_url: str | None = None, *,
                  refresh: bool = False, progress: bool = False) -> pd.DataFrame:
    """The VBN ``ecephys_sessions.csv`` as a DataFrame, one row per recording session (153 in the release).

    Downloaded once into ``<cache>/visual-behavior-neuropixels/project_metadata/`` and read from there afterwards
    (``refresh=True`` fetches it again). ``structure_acronyms`` becomes a tuple of str; the other columns are as
    published (``unit_count`` float, ``experience_level`` 'Familiar'/'Novel', ``abnormal_*`` NaN when clean).
    """
    dest = resolve_cache(cache) / SESSIONS_KEY
    if refresh or not dest.exists():
        download(SESSIONS_KEY, dest, base_url=base_url, progress=progress)
    return read_session_table(dest)


def read_session_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a local copy of ``ecephys_sessions.csv``; see :func:`session_table`."""
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputError(path, f"cannot read the session table: {err}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(path, f"not a VBN ecephys_sessions table: missing column(s) {', '.join(missing)}")
    table["structure_acronyms"] = table["structure_acronyms"].map(parse_acronyms)
    return table


def parse_acronyms(value) -> tuple[str, ...]:
    """``"['APN', 'CA1', nan]"`` (the csv's Python-list string), a list, or NaN -> ``('APN', 'CA1')``.

    Entries such as ``nan`` or ``None`` (channels outside any annotated structure) are dropped.
    """
    if isinstance(value, (list, tuple)):
        items = value
    elif value is None or (isinstance(value, float) and value != value):
        return ()
    else:
        text = str(value).strip()
        try:
            items = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            # literal_eval refuses bare ``nan``; fall back to splitting the list text ourselves
            items = text.strip("[]").split(",")
        if not isinstance(items, (list, tuple, set)):
            items = [items]  # a lone acronym (or number) rather than a list
    out = []
    for item in items:
        name = str(item).strip().strip("'\"").strip()
        if name and name.lower() not in ("nan", "none"):
            out.append(name)
    return tuple(out)


def genotype_short(genotype: str) -> str:
    """Short name of a VBN genotype: ``'wt/wt'`` -> ``'wt'``, ``'Sst-IRES-Cre/wt;Ai32(...)/wt'`` -> ``'Sst'``."""
    text = str(genotype)
    if text.lower().startswith("wt/wt"):
        return "wt"
    return re.split(r"[-/;]", text, maxsplit=1)[0]


def select_sessions(table: pd.DataFrame, areas: Sequence[str] | None = None, genotype: str | None = None,
                    experience: str | None = None, min_units: float | None = None,
                    exclude_abnormal: bool = True) -> pd.DataFrame:
    """Rows of a session table that match every given criterion (criteria left at None are not applied).

    areas: the session must have recorded ALL of these structures (exact CCF acronyms, e.g. ``["VISp", "LP"]``).
    genotype: case-insensitive match on the full genotype or its short name (``wt``, ``Sst``, ``Vip``).
    experience: ``familiar`` or ``novel`` (case-insensitive) against ``experience_level``.
    min_units: keep sessions with ``unit_count >= min_units`` (units before QC).
    exclude_abnormal: drop sessions with a noted ``abnormal_histology`` or ``abnormal_activity``, as AllenSDK's
    ``get_ecephys_session_table()`` does by default.
    """
    keep = pd.Series(True, index=table.index)
    if exclude_abnormal:
        keep &= table["abnormal_histology"].isna() & table["abnormal_activity"].isna()
    if areas:
        wanted = {areas} if isinstance(areas, str) else set(areas)
        recorded = table["structure_acronyms"].map(parse_acronyms)
        keep &= recorded.map(lambda have: wanted.issubset(have))
    if genotype:
        g = genotype.strip().lower()
        full = table["genotype"].astype(str).str.lower()
        short = table["genotype"].map(genotype_short).str.lower()
        keep &= (full == g) | (short == g)
    if experience:
        e = experience.strip().lower()
        if e not in ("familiar", "novel"):
            raise InputError("--experience", f"expected 'familiar' or 'novel', got {experience!r}")
        keep &= table["experience_level"].astype(str).str.lower() == e
    if min_units is not None:
        keep &= pd.to_numeric(table["unit_count"], errors="coerce").fillna(0) >= min_units
    return table.loc[keep.astype(bool)]


# ------------------------------------------------------------------------------------------ downloading
def download(url_or_key: str, dest: str | os.PathLike, *, expected_size: int | None = None, progress: bool = True,
             retries: int = 3, timeout: float = 60.0, backoff: float = 1.0, base_url: str | None = None) -> Path:
    """Fetch ``url_or_key`` (a URL, or a bucket key joined to the base URL) into ``dest``; return ``dest``.

    Resumable (HTTP Range from ``<dest>.part``), size-checked, renamed into place only when complete, and skipped
    when ``dest`` already has the remote size. ``retries``: how many consecutive attempts without progress may
    fail (dropped connection, timeout, 5xx) before giving up, waiting ``backoff * 2**k`` s before retry k.
    ``timeout`` (s) bounds connecting and each read. Raises :class:`InputError` on an HTTP error status, a size
    mismatch, or when retries are spent (the ``.part`` file is then kept for the next run).
    """
    url = _url(url_or_key, base_url)
    dest = Path(dest).expanduser()
    part = dest.with_name(dest.name + ".part")

    try:
        head_size = _head_size(url, timeout=timeout, retries=retries, backoff=backoff)
    except Retryable as err:
        if dest.is_file():
            # Offline: a file under the final name was size-checked before its rename, so reuse it.
            log.warning("%s: cannot reach the server (%s); using the cached file", dest, err.problem)
            return dest
        raise InputError(url, f"{err.problem} (gave up after {retries + 1} attempts)") from None
    if head_size is not None and expected_size is not None and head_size != expected_size:
        raise InputError(url, f"server reports {head_size} bytes, expected {expected_size}")
    total = head_size if head_size is not None else expected_size

    if dest.is_dir():
        raise InputError(dest, "is a directory; expected a file path to download into")
    if dest.exists() and total is not None and dest.stat().st_size == total:
        log.info("%s: already complete (%d bytes)", dest, total)
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        body_size = _fetch_resuming(url, part, total, retries=retries, backoff=backoff, timeout=timeout,
                                    progress=progress)
        size = part.stat().st_size if part.exists() else 0
        for name, want in (("Content-Length", body_size), ("HEAD", head_size), ("expected", expected_size)):
            if want is not None and size != want:
                part.unlink(missing_ok=True)
                raise InputError(url, f"downloaded {size} bytes but the {name} size is {want}; partial file removed")
        os.replace(part, dest)
    except OSError as err:  # disk full, no permission, read-only cache: the user's environment, not a bug
        raise InputError(dest, f"cannot write: {err.strerror or err}") from None
    log.info("%s: downloaded %d bytes", dest, size)
    return dest


def _fetch_resuming(url: str, part: Path, total: int | None, *, retries: int, backoff: float, timeout: float,
                    progress: bool) -> int | None:
    """GET ``url`` into ``part`` until complete, resuming after failures; return the size the server reported.

    ``total`` is the size known beforehand (HEAD or expected) or None. Raises InputError when ``retries``
    consecutive attempts without progress have failed; the bytes received so far stay in ``part``.
    """
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if total is not None and have > total:
            log.warning("%s: %d bytes on disk but the file has %d; starting over", part, have, total)
            part.unlink()
            have = 0
        if total is not None and have == total:
            return None  # a previous run got every byte but stopped before the rename
        try:
            return _fetch_into(url, part, have, total, timeout=timeout, progress=progress)
        except Retryable as err:
            now = part.stat().st_size if part.exists() else 0
            failures = 0 if now > have else failures + 1
            if failures > retries:
                tail = f"; {now} bytes kept in {part.name}, run again to resume" if now else ""
                raise InputError(url, f"{err.problem} (gave up after {failures} attempts){tail}") from None
            wait = backoff * 2 ** max(failures - 1, 0)
            log.warning("%s: %s; retrying in %.1f s from byte %d", url, err.problem, wait, now)
            time.sleep(wait)


def download_sessions(ids: Iterable[int | str], cache: str | os.PathLike | None = None, base_url: str | None = None,
                      *, progress: bool = True, retries: int = 3, timeout: float = 60.0) -> list[Path]:
    """Download the NWB file of each ecephys session id into ``<cache>/<session_key(id)>``; return their paths.

    Ids are checked before any network traffic, so a typo fails fast. Each file is resumable and skipped when
    already complete (see :func:`download`).
    """
    sids = [_session_id(i) for i in ids]
    root = resolve_cache(cache)
    return [download(session_key(s), root / session_key(s), base_url=base_url, progress=progress,
                     retries=retries, timeout=timeout) for s in sids]


def _head_size(url: str, *, timeout: float, retries: int, backoff: float) -> int | None:
    """Size of the remote file in bytes from a HEAD request, or None when the server does not say.

    Raises Retryable when every attempt failed for a transient reason, InputError on other HTTP errors.
    """
    for attempt in range(retries + 1):
        try:
            with request(url, method="HEAD", timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                return int(length) if length is not None else None
        except urllib.error.HTTPError as err:  # only 416 reaches here, meaningless for HEAD
            raise InputError(url, f"HTTP {err.code} {err.reason}") from None
        except Retryable:
            if attempt == retries:
                raise
            time.sleep(backoff * 2 ** attempt)
    return None  # pragma: no cover - the loop always returns or raises


def _fetch_into(url: str, part: Path, have: int, total: int | None, *, timeout: float,
                progress: bool) -> int | None:
    """One GET, appending to ``part`` from byte ``have``; return the file's full size (None if unknown).

    Raises Retryable when the connection breaks; the bytes received so far stay in ``part``.
    """
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = request(url, headers=headers, timeout=timeout)
    except urllib.error.HTTPError as err:  # 416: our offset is at or past the end of the remote file
        log.warning("%s: server refused range from byte %d (HTTP %d); starting over", url, have, err.code)
        part.unlink(missing_ok=True)
        raise Retryable(f"HTTP {err.code} {err.reason}") from None
    with resp:
        start, full = 0, None
        if resp.status == 206:
            m = CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if m and int(m.group(1)) == have:
                start = have
                full = int(m.group(3)) if m.group(3) != "*" else total
            else:
                # A range we did not ask for: keep nothing of it, start the file over.
                log.warning("%s: unexpected Content-Range %r; starting over", url, resp.headers.get("Content-Range"))
                part.unlink(missing_ok=True)
                raise Retryable("unexpected Content-Range")
        else:
            if have:
                log.warning("%s: server ignored the Range request; restarting from byte 0", url)
            length = resp.headers.get("Content-Length")
            full = int(length) if length is not None else total
        mode = "ab" if start else "wb"
        written = start
        bar = tqdm(total=full, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=part.name.removesuffix(".part"), disable=not progress, leave=False)
        try:
            with open(part, mode) as fh:
                while True:
                    try:
                        chunk = resp.read(_CHUNK)
                    except NETWORK_ERRORS as err:
                        raise Retryable(f"connection dropped at byte {written}: {reason(err)}") from None
                    if not chunk:
                        break
                    fh.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
    if full is not None and written < full:
        # http.client's read(n) returns b'' when the peer closes early, even under Content-Length: a drop.
        raise Retryable(f"connection closed at byte {written} of {full}")
    return full


# --------------------------------------------------------------------------------------------- display
def print_sessions(table: pd.DataFrame, *, total: int | None = None, limit: int | None = None, console=None) -> None:
    """Print selected sessions as a rich table (id, mouse, genotype, day, experience, image set, units, areas)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    shown = table if limit is None else table.head(max(limit, 0))
    out = Table(title="Allen VBN ecephys sessions", title_justify="left")
    for name, justify in (("session", "right"), ("mouse", "right"), ("genotype", "left"), ("day", "right"),
                          ("experience", "left"), ("images", "left"), ("units", "right"), ("areas", "left")):
        out.add_column(name, justify=justify, overflow="fold")
    for row in shown.itertuples(index=False):
        out.add_row(str(row.ecephys_session_id), _cell(row, "mouse_id"), genotype_short(row.genotype),
                    _cell(row, "session_number"), _cell(row, "experience_level"), _cell(row, "image_set"),
                    _cell(row, "unit_count"), " ".join(parse_acronyms(row.structure_acronyms)))
    console.print(out)
    of = f" of {total}" if total is not None else ""
    more = f", first {len(shown)} shown" if len(shown) < len(table) else ""
    console.print(f"{len(table)}{of} sessions selected{more}")


def _cell(row, column: str) -> str:
    """A table cell: integers without '.0' (the csv stores counts as floats), missing values as '-'."""
    value = getattr(row, column, None)
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
