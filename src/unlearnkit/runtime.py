"""Process-level settings: torch threads sized to the free cores, seeding."""
from __future__ import annotations

import os
import random
import time

import numpy as np
import torch


def _busy_cores(interval: float = 0.1) -> float | None:
    """Cores busy right now, from two /proc/stat samples (Linux); None elsewhere."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
        return sum(vals), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    frac = 1 - (idle1 - idle0) / max(1, total1 - total0)
    return frac * (os.cpu_count() or 1)


def free_cores() -> int:
    """Cores not busy with other work right now (at least 1).

    Oversubscribing torch threads on a shared machine is 10-20x slower (measured), so we size
    the pool to what is free rather than to ``os.cpu_count()``. The 1-minute load average lags
    (it still counts a job that just ended), so we sample /proc/stat instead where we can.
    """
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = _busy_cores()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except OSError:
            busy = 0.0
    return max(1, min(n, n - int(busy + 0.5)))


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (default: $UNLEARNKIT_THREADS or the free cores)."""
    n = n or int(os.environ.get("UNLEARNKIT_THREADS", 0)) or free_cores()
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
