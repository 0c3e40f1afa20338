"""How many CPU threads torch uses: ``--threads``, ``EMOREG_THREADS``, or a default that survives contention.

torch's default is one intra-op thread per core of the machine. On a small machine that is the worst choice
when anything else runs: every parallel region waits for its slowest thread, and a thread that shares its core
with a busy process is descheduled for whole time slices. Measured on 2 cores (``benchmarks/cpu_contention.py``,
README "Performance"): next to one busy process the probes suite took 2.64x its idle time with 2 threads and
1.18x with this module's default (1 thread); on the idle machine the default chose 2 threads (1.01x).

The default therefore counts the cores *this process may use* (CPU affinity, the cgroup CPU quota of a
container, the ranks of a multi-process launch on the same node) and leaves out the cores that other
processes keep busy when the command starts (runnable tasks in ``/proc/loadavg``, sampled a few times).
Contention that starts later is not seen: pass ``--threads 1`` (or set ``EMOREG_THREADS=1``) when you know the
machine is shared.

Precedence: an explicit count (``--threads`` or the ``threads`` argument), then ``EMOREG_THREADS``, then
``OMP_NUM_THREADS`` (left to torch as set), then the default above.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from emoreg.errors import ConfigError

logger = logging.getLogger(__name__)

THREADS_ENV = "EMOREG_THREADS"
_CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
_LOADAVG = Path("/proc/loadavg")


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count chosen and why (``source``: ``argument``, ``EMOREG_THREADS``, ``OMP_NUM_THREADS``
    or ``auto``)."""

    threads: int
    source: str
    usable_cores: int
    busy_cores: int = 0

    def describe(self) -> str:
        if self.source == "auto":
            busy = f", {self.busy_cores} busy with other processes" if self.busy_cores else ""
            return (f"{self.threads} torch thread(s): {self.usable_cores} usable core(s){busy} "
                    f"(set --threads or {THREADS_ENV} to choose)")
        return f"{self.threads} torch thread(s), from {self.source}"


def parse_threads(value: str | int, source: str) -> int:
    """A positive thread count, or a :class:`ConfigError` that names where the bad value came from."""
    try:
        threads = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{source}: expected a whole number of threads (1 or more), got {value!r}") from None
    if threads < 1:
        raise ConfigError(f"{source}: expected a whole number of threads (1 or more), got {value!r}")
    return threads


def usable_cores() -> int:
    """Cores this process may run on: affinity, capped by a cgroup CPU quota, split between the processes of a
    multi-process launch on this node (``LOCAL_WORLD_SIZE``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    local_world = os.environ.get("LOCAL_WORLD_SIZE", "")
    if local_world.isdigit() and int(local_world) > 1:
        cores = max(1, cores // int(local_world))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    """The container's CPU limit in cores, or None when there is none (or it cannot be read)."""
    try:
        if _CGROUP_V2_MAX.is_file():
            quota, period = _CGROUP_V2_MAX.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if _CGROUP_V1_QUOTA.is_file() and _CGROUP_V1_PERIOD.is_file():
            quota_us = int(_CGROUP_V1_QUOTA.read_text())
            return None if quota_us <= 0 else quota_us / int(_CGROUP_V1_PERIOD.read_text())
    except (OSError, ValueError):
        return None
    return None


def busy_cores(samples: int = 5, interval_s: float = 0.02, loadavg: Path = _LOADAVG) -> int:
    """Cores kept busy by other processes right now: the median number of runnable tasks in ``/proc/loadavg``
    over a few samples, less this process's own thread. 0 where ``/proc/loadavg`` does not exist."""
    counts = []
    for i in range(samples):
        try:
            runnable = int(loadavg.read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        counts.append(runnable)
        if i + 1 < samples:
            time.sleep(interval_s)
    counts.sort()
    return max(0, counts[len(counts) // 2] - 1)


def choose_threads(threads: int | str | None = None, *, environ: dict[str, str] | None = None) -> ThreadChoice:
    """The thread count to use (see the module doc for the precedence); changes nothing."""
    environ = os.environ if environ is None else environ
    cores = usable_cores()
    if threads is not None:
        return ThreadChoice(parse_threads(threads, "--threads"), "argument", cores)
    if environ.get(THREADS_ENV, "").strip():
        return ThreadChoice(parse_threads(environ[THREADS_ENV], THREADS_ENV), THREADS_ENV, cores)
    if environ.get("OMP_NUM_THREADS", "").strip():
        return ThreadChoice(parse_threads(environ["OMP_NUM_THREADS"], "OMP_NUM_THREADS"), "OMP_NUM_THREADS", cores)
    busy = busy_cores()
    return ThreadChoice(max(1, cores - busy), "auto", cores, busy)


def configure_threads(threads: int | str | None = None) -> ThreadChoice:
    """Choose the thread count and apply it to torch (intra-op threads); returns the choice."""
    import torch

    choice = choose_threads(threads)
    if choice.threads > choice.usable_cores:
        logger.warning("emoreg: %d threads requested but only %d core(s) are usable; threads beyond the cores "
                       "slow torch down", choice.threads, choice.usable_cores)
    torch.set_num_threads(choice.threads)
    logger.info("emoreg: %s", choice.describe())
    return choice
