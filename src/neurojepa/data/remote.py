"""Read a remote NWB file in place: a seekable file over HTTP byte ranges, for ``h5py.File(fileobj)``.

``neurojepa inspect URL`` needs the Units index and a few small tables of a 2-3 GB VBN file; ``prepare URL`` needs
the spike times too, but never the waveforms, amplitudes or LFP beside them. :class:`RemoteFile` lets h5py ask for
exactly the bytes it wants: each read becomes ``GET`` with ``Range: bytes=a-b`` (standard library ``urllib``
through :mod:`neurojepa.data.http`, like :mod:`neurojepa.data.allen`; no extra dependency, no event loop), in whole
blocks of :data:`BLOCK_SIZE` bytes so the many small reads of HDF5 metadata share requests. Blocks are kept in an LRU
cache of :data:`CACHE_BYTES`; a read that misses several consecutive blocks fetches them in one request.

URLs: ``https://`` and ``http://`` as they are; ``s3://BUCKET/KEY`` over https
(:func:`neurojepa.data.allen.https_url`: the public Allen VBN bucket maps to its https endpoint).

The first request (the file's first block) also gives the size (``Content-Range``) and proves the server honours
ranges; a server that answers 200 with the whole body instead is refused with one line (downloading 3 GB behind the
user's back is not what ``inspect`` promises). Errors are :class:`~neurojepa.errors.InputError` naming the URL:
unreachable (after :data:`RETRIES` retries with backoff), an HTTP error status (404, 403, ...), or no ranges.
"""

from __future__ import annotations

import atexit
import io
import re
import time
import urllib.error
import weakref
from collections import OrderedDict

import h5py

from ..errors import InputError
from .allen import https_url
from .http import CONTENT_RANGE, NETWORK_ERRORS, Retryable, request

BLOCK_SIZE = 64 * 1024  # bytes per block: HDF5 object headers and B-tree nodes are a few hundred bytes to a few KB
CACHE_BYTES = 256 * 1024 * 1024  # LRU cache of blocks (a whole small file, or the hot metadata of a large one)
RETRIES = 3  # retries of a request that failed for a transient reason (connection, 5xx, 408, 429)
BACKOFF_S = 0.5  # first retry delay, doubled on each retry
TIMEOUT_S = 30.0  # per request

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def open_hdf5(url: str) -> h5py.File:
    """The HDF5 file at ``url`` (http, https, s3), read in place; InputError naming the URL when it is unreachable,
    answers an HTTP error, serves no ranges, or is not HDF5. Close it (``h5.close()``) when done; files still
    open at interpreter exit are closed by an ``atexit`` hook, because h5py would otherwise call back into the
    half-torn-down Python file object while shutting down and crash the interpreter (segfault)."""
    fileobj = RemoteFile(url)
    try:
        h5 = h5py.File(fileobj, "r")
    except OSError as err:
        why = "not an HDF5 file, so not NWB" if not fileobj.is_hdf5() else "truncated or corrupt HDF5 file"
        raise InputError(url, f"{why} ({' '.join(str(err).split())})") from None
    _OPEN_FILES.add(h5)
    return h5


_OPEN_FILES: "weakref.WeakSet[h5py.File]" = weakref.WeakSet()


@atexit.register
def _close_open_files() -> None:
    for h5 in list(_OPEN_FILES):
        try:
            h5.close()
        except Exception:  # noqa: BLE001 - at exit, a failing close must not mask the real exit status
            pass


def remote_fingerprint(url: str) -> dict:
    """url, size, ETag and Last-Modified of the file at ``url`` from one one-byte range request."""
    return RemoteFile(url, block_size=1).fingerprint()


def is_url(source) -> bool:
    """True for ``http://``, ``https://`` and ``s3://`` strings (the sources :class:`RemoteFile` reads)."""
    return isinstance(source, str) and re.match(r"^(https?|s3)://", source, flags=re.IGNORECASE) is not None


class RemoteFile(io.RawIOBase):
    """A read-only, seekable binary file over HTTP(S) range requests.

    ``size`` (bytes), ``etag`` and ``last_modified`` (from the server, or None) identify the file;
    ``bytes_read`` and ``requests`` count what came over the network (tests and ``-v`` logging use them)."""

    def __init__(self, url: str, *, block_size: int = BLOCK_SIZE, cache_bytes: int = CACHE_BYTES):
        super().__init__()
        self.name = url  # as given (an s3:// URL stays one in messages)
        self.url = https_url(url)
        self.block_size, self.cache_bytes = int(block_size), int(cache_bytes)
        self.bytes_read = self.requests = 0
        self._pos = 0
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cached = 0
        self.size, self.etag, self.last_modified = -1, None, None
        self._head = self._fetch(0, 1, probe=True)[0][:8]  # the size, range support, the superblock h5py reads first

    # ------------------------------------------------------------------------------------------ network
    def _get(self, start: int, stop: int, probe: bool) -> bytes:
        """Bytes [start, stop) in one ranged GET (retried); on the probe also the size and validators."""
        for attempt in range(RETRIES + 1):
            try:
                return self._get_once(start, stop, probe)
            except Retryable as err:
                if attempt == RETRIES:
                    raise InputError(self.name, f"unreachable ({err.problem})") from None
                time.sleep(BACKOFF_S * 2 ** attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _get_once(self, start: int, stop: int, probe: bool) -> bytes:
        try:
            resp = request(self.url, headers={"Range": f"bytes={start}-{stop - 1}"}, timeout=TIMEOUT_S)
        except InputError as err:
            raise InputError(self.name, err.problem) from None  # an HTTP error status, named by the URL given
        except urllib.error.HTTPError as err:  # 416: a range past the end (an empty file on the probe)
            raise InputError(self.name, f"HTTP {err.code} {err.reason} (an empty file is not NWB)") from None
        with resp:
            self.requests += 1
            if resp.status != 206:
                raise InputError(self.name, f"the server does not serve byte ranges (HTTP {resp.status} to a Range "
                                            "request), so the file cannot be read in place; download it first")
            m = CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != start or (probe and m.group(3) == "*"):
                raise InputError(self.name, f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
            if probe:
                self.size = int(m.group(3))
                self.etag, self.last_modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
                stop = min(stop, self.size)
            try:
                body = resp.read()
            except NETWORK_ERRORS as err:
                raise Retryable(f"connection dropped: {err}") from None
        if len(body) != stop - start:
            raise Retryable(f"got {len(body)} of {stop - start} bytes")
        self.bytes_read += len(body)
        return body

    def _fetch(self, first: int, n: int, probe: bool = False) -> dict[int, bytes]:
        """Blocks first .. first + n - 1 in one request, added to the cache; returns them."""
        bs = self.block_size
        stop = (first + n) * bs if probe else min((first + n) * bs, self.size)
        data = self._get(first * bs, stop, probe)
        got = {first + k: data[k * bs:(k + 1) * bs] for k in range((len(data) + bs - 1) // bs)}
        for i, blk in got.items():
            self._cache[i] = blk
            self._cached += len(blk)
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            self._cached -= len(self._cache.popitem(last=False)[1])
        return got

    # ------------------------------------------------------------------------------------------ file API
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        out = memoryview(buffer).cast("B")
        n = max(0, min(len(out), self.size - self._pos))
        if n == 0:
            return 0
        bs, pos = self.block_size, self._pos
        first, last = pos // bs, (pos + n - 1) // bs
        blocks: dict[int, bytes] = {}
        missing: list[int] = []
        for i in range(first, last + 1):
            if i in self._cache:
                self._cache.move_to_end(i)
                blocks[i] = self._cache[i]
            else:
                missing.append(i)
        for start, count in _runs(missing):  # one request per run of consecutive missing blocks
            blocks.update(self._fetch(start, count))
        done = 0
        for i in range(first, last + 1):
            lo, hi = max(pos, i * bs) - i * bs, min(pos + n, (i + 1) * bs) - i * bs
            out[done:done + hi - lo] = blocks[i][lo:hi]
            done += hi - lo
        self._pos += n
        return n

    def is_hdf5(self) -> bool:
        """Whether the file starts with the HDF5 signature (at byte 0; NWB files have no user block)."""
        return self._head == _HDF5_SIGNATURE

    def fingerprint(self) -> dict:
        """What identifies the remote file's version without reading it all: url, size, ETag, Last-Modified."""
        return {"url": self.name, "size": self.size, "etag": self.etag, "last_modified": self.last_modified}

    def __repr__(self) -> str:
        return f"RemoteFile({self.name!r}, {self.size} bytes, {self.bytes_read} read in {self.requests} requests)"


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted ints -> (start, count) of each run of consecutive values: [3, 4, 5, 9] -> [(3, 3), (9, 1)]."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs
