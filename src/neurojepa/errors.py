"""Expected errors and all-or-nothing file writing.

Every problem a user can cause (a file that is not NWB, a typo in a config key, a bin size of zero) raises
:class:`InputError`. The command line turns it into one line ``neurojepa: error: <what>: <problem>`` and exit
code 2, without a traceback. Anything else is a bug and keeps its traceback.

Files are never half-written: :func:`atomic_path` hands out a temporary name beside the final one and renames
it into place only when the block finished without an exception.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

EXIT_INPUT_ERROR = 2


class InputError(Exception):
    """A problem with what the user handed in. ``str(err)`` is the one line shown to the user."""

    def __init__(self, where: str | os.PathLike | None, problem: str):
        self.where = None if where is None else str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}" if self.where else problem)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it to ``final`` only if the block succeeds.

    With ``directory=True`` the temporary path is a fresh directory and an existing ``final`` directory is
    replaced as a whole. On failure the temporary file or directory is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
        tmp.unlink()  # the writer creates it; some (h5py, pynwb) refuse to open an existing empty file
    try:
        yield tmp
        if directory and final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
