"""The HTTP pieces shared by the Allen downloader and the remote-file reader: one request, one notion of retryable.

Standard library only (``urllib``). :func:`request` opens one request with neurojepa's User-Agent and sorts the
failures: a status worth retrying (:data:`RETRY_STATUS`) or a dropped/refused/stalled connection
(:data:`NETWORK_ERRORS`) raises :class:`Retryable`; 416 (Range Not Satisfiable) is re-raised as the
``urllib.error.HTTPError`` for the caller to decide; any other HTTP error is an
:class:`~neurojepa.errors.InputError` naming the URL. Retrying (how often, how long to wait, resuming) is the
caller's policy: :mod:`neurojepa.data.allen` (whole-file downloads) and :mod:`neurojepa.data.remote` (byte ranges).
"""

from __future__ import annotations

import http.client
import re
import urllib.error
import urllib.request

from ..errors import InputError
from ..version import __version__

RETRY_STATUS = {408, 429, 500, 502, 503, 504}  # transient by HTTP semantics (S3 answers 503 "Slow Down")
# What a dropped, refused or stalled connection looks like from urllib: IncompleteRead and friends
# (HTTPException), and OSError for the rest (ConnectionError, socket timeouts, ssl.SSLError, URLError).
NETWORK_ERRORS = (http.client.HTTPException, OSError)
CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")  # a 206 answer's Content-Range: first, last, total


class Retryable(Exception):
    """A failure worth retrying: the connection dropped or stalled, or the server said 5xx/408/429."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


def request(url: str, *, method: str = "GET", headers: dict[str, str] | None = None, timeout: float):
    """Open ``url`` (the response, a context manager); failures sorted as in the module docstring."""
    req = urllib.request.Request(url, method=method,
                                 headers={"User-Agent": f"neurojepa/{__version__}", **(headers or {})})
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) URLs chosen by the user
    except urllib.error.HTTPError as err:
        problem = f"HTTP {err.code} {err.reason}"
        err.close()
        if err.code in RETRY_STATUS:
            raise Retryable(problem) from None
        if err.code == 416:
            raise  # Range Not Satisfiable: the caller decides
        raise InputError(url, problem) from None
    except NETWORK_ERRORS as err:
        raise Retryable(f"connection failed: {reason(err)}") from None


def reason(err: BaseException) -> str:
    """The short human reason of a network error (URLError's ``reason``, else the message, else the type)."""
    why = getattr(err, "reason", None)
    return str(why or err) or type(err).__name__
