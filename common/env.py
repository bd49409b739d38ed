"""Describe the machine a result came from, so that every number can be traced to it.

A benchmark number without its machine is a rumour: the same code differs by 10x
between a laptop core and a server socket, and by 2x between two BLAS builds. Each bench
JSON document embeds :func:`machine_info`.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from .devices import _cpu_model, cpu_spec, gpu_spec_for

LIBRARIES = ("numpy", "torch", "triton", "grpcio", "scikit-learn", "matplotlib")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit(repo: Path | None = None) -> str | None:
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo,
                             capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo, capture_output=True, text=True, timeout=5).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def blas_info() -> list[dict]:
    from threadpoolctl import threadpool_info

    return [{k: i.get(k) for k in ("user_api", "internal_api", "num_threads", "version",
                                   "architecture")}
            for i in threadpool_info()]


def gpu_info() -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    spec = gpu_spec_for(p.name)
    return {"name": p.name, "sm_count": p.multi_processor_count,
            "memory_bytes": p.total_memory, "capability": f"{p.major}.{p.minor}",
            "cuda": torch.version.cuda, "datasheet": spec.name if spec else None}


def machine_info(probe: bool = True) -> dict:
    """CPU, cores, BLAS, library versions, GPU (if any), and the measured CPU roofline."""
    info = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "blas": blas_info(),
        "torch_threads": _torch_threads(),
        "versions": {lib: _version(lib) for lib in LIBRARIES},
        "gpu": gpu_info(),
        "git_commit": git_commit(),
    }
    if probe:
        spec = cpu_spec()
        info["cpu_roofline"] = {"fp32_flops": spec.peak("fp32"),
                                "mem_bandwidth": spec.mem_bandwidth,
                                "ridge_flop_per_byte": spec.ridge("fp32"),
                                "source": spec.source, "date": spec.date}
    return info


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return None
