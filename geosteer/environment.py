"""The environment record every result file carries: device, versions, commit, date, load.

One function, used by the benchmarks, `geosteer eval` and `geosteer
train-demo`, so result files of every kind can be compared field by field.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

# The checkout this package was imported from (git fields are None outside one).
_SOURCE = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_SOURCE, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


__all__ = ["cpu_name", "device_name", "environment", "module_version"]


def module_version(module: str) -> str | None:
    """`module.__version__`, "unknown" without one, None when it does not import."""
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001  (any import failure means "not available")
        return None
    return getattr(mod, "__version__", "unknown")


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU's with the torch thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{cpu_name()} ({threads} thread{'' if threads == 1 else 's'})"


def environment(device: torch.device | str = "cpu") -> dict[str, object]:
    """Fields a result file records about the run.

    Args:
        device: the device the measured work ran on.

    Returns:
        device, device_name, cpu, cpu_count, threads, load1, python,
        machine, torch, cuda, triton, numba, numpy, scipy, faiss, geosteer,
        omp_env, commit, dirty (tracked files changed, results files under
        bench/results/ aside), date (UTC, ISO 8601).
    """
    commit = _git("rev-parse", "HEAD")
    # Result files under bench/results/ are what a run writes, not code: a
    # run appending to a tracked results file is still a clean-commit run.
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "device": torch.device(device).type,
        "device_name": device_name(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load1": load,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": module_version("triton"),
        "numba": module_version("numba"),
        "numpy": module_version("numpy"),
        "scipy": module_version("scipy"),
        "faiss": module_version("faiss"),
        "geosteer": module_version("geosteer"),
        # Thread settings change CPU timings a lot on a shared machine
        # (OMP_WAIT_POLICY=PASSIVE avoids spin-waits when cores are oversubscribed).
        "omp_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS") if k in os.environ},
        "commit": commit,
        "dirty": bool(dirty) if dirty is not None else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
