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
