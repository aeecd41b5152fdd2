"""The process's share of the machine: how many CPUs it may use, and torch's thread count.

``threads: 0`` in a config (the default for teacher and student) means every CPU this process may use:
``os.sched_getaffinity(0)``, which honours ``taskset``, cgroup cpusets and SLURM's ``--cpus-per-task``, unlike
``os.cpu_count()``. A positive value pins the count. Results do not depend on it beyond float rounding: torch's
CPU kernels split work across threads, so sums can be reordered (docs/config.md records how much).
"""

from __future__ import annotations

import os

import torch


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity masks
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: int, processes: int = 1) -> int:
    """``threads`` when positive, else this process's share of :func:`available_cpus` when ``processes`` local
    processes (e.g. DDP ranks on one machine) split them."""
    return int(threads) if threads and threads > 0 else max(1, available_cpus() // max(1, int(processes)))


def set_torch_threads(threads: int, processes: int = 1) -> int:
    """Set torch's intra-op thread count from a config value (0 = every available CPU, shared by ``processes``
    local processes); returns the count."""
    n = resolve_threads(threads, processes)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n



def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_memory_mb() -> float:
    """Peak resident memory (MB) of this process since it started (VmHWM; ru_maxrss where /proc is absent)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource
        import sys

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
    return round(kb / 1024, 1)


class MemoryWatch:
    """Peak resident memory (MB) of this process during a ``with`` block, sampled every ``interval`` s by a
    background thread (a peak shorter than the interval can be missed; 20 samples a second catch any allocation
    large enough to matter, since touching it takes longer).

    Why sampling: resetting the kernel's high-water mark (``/proc/self/clear_refs``) would also reset the
    process's ``ru_maxrss``, so ``/usr/bin/time -v`` would then under-report the whole run's peak."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.interval, self.peak_mb = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)

    def _sample(self) -> None:
        kb = _status_kb("VmRSS")
        if kb is not None:
            self.peak_mb = max(self.peak_mb, round(kb / 1024, 1))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "MemoryWatch":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
