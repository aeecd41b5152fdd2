"""``prepare`` over many recordings in parallel with Dask (``neurojepa prepare A.nwb B.nwb ... --workers N``).

Each input is one Dask task running :func:`neurojepa.data.prepare.prepare` into ``out_root/<stem>/``; nothing is
shared between tasks, so a session is the unit of parallelism and of failure. Decisions (docs/scale.md):

- **Engine.** ``workers=N`` starts a ``distributed.LocalCluster`` of N single-threaded *processes* (``prepare`` is
  Python/numba/HDF5 work that holds the GIL and h5py serialises on a global lock, so threads would not scale);
  ``scheduler="tcp://host:port"`` submits to an existing cluster (``dask scheduler`` + ``dask worker`` or
  ``dask-jobqueue`` on SLURM): the inputs and ``out_root`` must then be paths every worker sees (a shared file
  system). Neither: the inputs run one after another in this process.
- **Failure isolation.** A task catches every exception of its session and returns it as one line
  (``InputError`` as ``where: problem``, anything else as ``<Type>: message``), so one truncated file never cancels
  the others; a worker that dies (segfault, out of memory) is reported the same way from the future. ``prepare``
  writes through ``atomic_path``, so a failed session leaves nothing under ``out_root``.
- **Progress**: a rich bar over completed sessions (on a terminal only).
- **QC figure**: ``draw_qc`` (e.g. :func:`neurojepa.report.qc_figure.plot_qc`, passed by the CLI) goes with each
  task to :func:`~neurojepa.data.prepare.prepare`, which draws ``qc.png`` inside its atomic directory; this module,
  like all of :mod:`neurojepa.data`, does not depend on the report layer. It must pickle (a module-level function).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from .prepare import PrepareConfig, QCFigure, prepare, validate

log = logging.getLogger(__name__)


def output_dirs(inputs: Sequence[str | os.PathLike], out_root: str | os.PathLike) -> dict[str, Path]:
    """``{input: out_root/<stem>}``; two inputs with the same stem are an :class:`InputError` (one would overwrite
    the other)."""
    out_root = Path(out_root)
    outs: dict[str, Path] = {}
    seen: dict[str, str] = {}
    for inp in inputs:
        stem = Path(inp).stem
        if stem in seen:
            raise InputError("inputs", f"{seen[stem]} and {inp} would both be prepared into {out_root / stem}")
        if str(inp) in outs:
            raise InputError("inputs", f"{inp} is given twice")
        seen[stem] = str(inp)
        outs[str(inp)] = out_root / stem
    return outs


def _error_line(err: BaseException) -> str:
    return str(err) if isinstance(err, InputError) else f"{type(err).__name__}: {err}"


def _prepare_one(inp: str, out: str, cfg: PrepareConfig, states_from: str | None,
                 draw_qc: QCFigure | None = None) -> tuple[bool, str]:
    """One Dask task: ``(True, out_dir)`` or ``(False, error line)``; never raises (see the module docstring)."""
    try:
        return True, str(prepare(inp, out, cfg, states_from=states_from, draw_qc=draw_qc))
    except Exception as err:  # noqa: BLE001 - any failure of one session is reported, the others go on
        return False, _error_line(err)


def _client(workers: int | None, scheduler: str | None):
    """(client, cluster or None) for ``workers`` local processes or an existing ``scheduler``."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError, ValueError) as err:
            raise InputError("scheduler", f"cannot connect to {scheduler}: {err}") from None
    cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster), cluster


def _progress(total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("preparing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=total < 2 or not os.isatty(2), transient=True)


def prepare_many(inputs: Sequence[str | os.PathLike], out_root: str | os.PathLike, cfg: PrepareConfig | None = None,
                 *, workers: int | None = None, scheduler: str | None = None,
                 states_from: str | None = None, draw_qc: QCFigure | None = None) -> dict[str, Path | str]:
    """Prepare every input into ``out_root/<stem>/``, in parallel on Dask (see the module docstring).

    workers: number of local worker processes; scheduler: address of an existing Dask scheduler (wins over
    ``workers``); neither: sequential in this process. draw_qc: draws each session's ``qc.png`` (see
    :func:`neurojepa.data.prepare.prepare_session`). Returns ``{input (as given, str): out dir (Path) or error
    line (str)}`` in input order. Raises :class:`InputError` before any work for bad options, no inputs, clashing
    output names, ``workers < 1`` or an unreachable scheduler; a failing session never raises.
    """
    cfg = cfg or PrepareConfig()
    validate(cfg)
    if not inputs:
        raise InputError("inputs", "no input files")
    if workers is not None and int(workers) < 1:
        raise InputError("workers", f"need at least 1 worker, got {workers}")
    outs = output_dirs(inputs, out_root)
    results: dict[str, Path | str] = {}

    def record(inp: str, ok: bool, value: str, bar) -> None:
        results[inp] = Path(value) if ok else value
        if not ok:
            log.info("%s failed: %s", inp, value)  # the caller prints the line (the CLI after the bar)
        bar.advance(task)

    with _progress(len(outs)) as bar:
        task = bar.add_task("prepare", total=len(outs))
        if workers is None and scheduler is None:
            for inp, out in outs.items():
                record(inp, *_prepare_one(inp, str(out), cfg, states_from, draw_qc), bar)
        else:
            from distributed import as_completed

            client, cluster = _client(workers, scheduler)
            try:
                # pure=False: a rerun after fixing a file must run again, not reuse a cached result
                futures = {client.submit(_prepare_one, inp, str(out), cfg, states_from, draw_qc, pure=False,
                                         retries=0): inp
                           for inp, out in outs.items()}
                for fut in as_completed(futures):
                    try:
                        ok, value = fut.result()
                    except Exception as err:  # noqa: BLE001 - the worker died (KilledWorker), not the task
                        ok, value = False, _error_line(err)
                    record(futures[fut], ok, value, bar)
            finally:
                client.close()
                if cluster is not None:
                    cluster.close()
    return {inp: results[inp] for inp in outs}
