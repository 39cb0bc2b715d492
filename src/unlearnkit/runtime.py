"""Process-level settings: torch threads sized to the free cores, seeding."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def free_cores() -> int:
    """Cores not busy with other work (CPU count minus the 1-minute load, at least 1).

    Oversubscribing torch threads on a shared machine is 10-20x slower (measured), so we size
    the pool to what is free rather than to ``os.cpu_count()``.
    """
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:
        busy = 0
    return max(1, n - busy)


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (default: $UNLEARNKIT_THREADS or the free cores)."""
    n = n or int(os.environ.get("UNLEARNKIT_THREADS", 0)) or free_cores()
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
