"""Process-level settings: torch threads sized to the free cores, seeding, deterministic mode, and
the environment record written into every results file."""
from __future__ import annotations

import os
import platform
import random
import sys
import time
from importlib import metadata
from typing import Any

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


_DETERMINISTIC = False


def _all_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (default: $UNLEARNKIT_THREADS, else the free cores; in
    deterministic mode all cores, because the thread count changes the order of float reductions)."""
    n = n or int(os.environ.get("UNLEARNKIT_THREADS", 0)) or (_all_cores() if _DETERMINISTIC else free_cores())
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(seed: int = 0) -> None:
    """``--deterministic``: seed Python / NumPy / torch, make torch use deterministic kernels only
    (``torch.use_deterministic_algorithms``; an op without one raises instead of varying), turn off
    cuDNN autotuning, and use a thread count that does not depend on the machine's load. Two runs of
    the same command on the same machine and library versions then give identical numbers."""
    global _DETERMINISTIC
    _DETERMINISTIC = True
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    set_threads(None)
    seed_everything(seed)


def is_deterministic() -> bool:
    return _DETERMINISTIC


PACKAGES = ("torch", "transformers", "accelerate", "peft", "safetensors", "tokenizers", "numpy", "scipy")
ENV_VARS = ("OMP_NUM_THREADS", "UNLEARNKIT_THREADS", "CUBLAS_WORKSPACE_CONFIG", "HF_HUB_OFFLINE", "PYTHONHASHSEED")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """What a reader needs to reproduce a number: Python, OS, CPU / GPU, torch threads, library
    versions, the determinism settings and the environment variables that change results."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "deterministic": _DETERMINISTIC,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "packages": {p: _version(p) for p in PACKAGES},
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
    }
