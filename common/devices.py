"""What a device can do at best: peak arithmetic rate per dtype and memory bandwidth.

These two numbers are the roofline's ceilings (Williams, Waterman & Patterson,
"Roofline: An Insightful Visual Performance Model", CACM 2009). For a GPU we take them
from the vendor's datasheet (dated, with the source, dense rates: sparsity doubles
the marketing number and is never what a dense kernel gets). For the CPU under
our feet no datasheet applies (the VM, the BLAS build and the core count all matter), so
we *measure* them with a short probe: a large float32 matmul for FLOP/s and STREAM's
copy and add kernels for bytes/s. The probe's result is cached per machine.

To add a device, add a ``DeviceSpec`` to ``DEVICES``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class DeviceSpec:
    """Peak rates of one device. FLOP/s per dtype name ('fp32', 'tf32', 'fp16', 'bf16',
    'fp8', 'fp64'); bandwidth in bytes/s of the main memory (HBM for GPUs, DRAM for CPUs)."""

    name: str
    peak_flops: dict[str, float]
    mem_bandwidth: float
    source: str
    date: str
    sm_count: int = 0
    l2_bytes: int = 0
    smem_per_block: int = 0  # max shared memory one thread block may use, bytes
    regs_per_sm: int = 0
    max_threads_per_sm: int = 0
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def peak(self, dtype: str = "fp32") -> float:
        try:
            return self.peak_flops[dtype]
        except KeyError:
            raise KeyError(f"{self.name} has no peak for dtype {dtype!r}; "
                           f"known: {sorted(self.peak_flops)}") from None

    def ridge(self, dtype: str = "fp32") -> float:
        """Arithmetic intensity (FLOP/byte) where compute and memory time are equal."""
        return self.peak(dtype) / self.mem_bandwidth

    def to_dict(self) -> dict:
        return asdict(self)


T = 1e12
# NVIDIA H100 Tensor Core GPU datasheet (SXM5 column), nvidia.com/en-us/data-center/h100/,
# as read 2024-05. The datasheet lists tensor-core rates "with sparsity"; dense is half.
H100_SXM = DeviceSpec(
    name="NVIDIA H100 SXM",
    peak_flops={"fp64": 67 * T, "fp32": 67 * T, "tf32": 494.7 * T, "bf16": 989.4 * T,
                "fp16": 989.4 * T, "fp8": 1978.9 * T},
    mem_bandwidth=3.35e12,
    source="NVIDIA H100 Tensor Core GPU datasheet, SXM5 (dense = half the sparse figure)",
    date="2024-05",
    sm_count=132,
    l2_bytes=50 * 2**20,
    smem_per_block=227 * 1024,
    regs_per_sm=65536,
    max_threads_per_sm=2048,
    notes="fp32 is the non-tensor-core rate; fp64 is the FP64 tensor-core rate",
)
# NVIDIA H200 Tensor Core GPU datasheet (SXM column), nvidia.com/en-us/data-center/h200/,
# as read 2024-11: the same Hopper die and compute rates as H100 SXM, with 141 GB of
# HBM3e at 4.8 TB/s.
H200 = DeviceSpec(
    name="NVIDIA H200",
    peak_flops=dict(H100_SXM.peak_flops),
    mem_bandwidth=4.8e12,
    source="NVIDIA H200 Tensor Core GPU datasheet, SXM (dense = half the sparse figure)",
    date="2024-11",
    sm_count=132,
    l2_bytes=50 * 2**20,
    smem_per_block=227 * 1024,
    regs_per_sm=65536,
    max_threads_per_sm=2048,
)

DEVICES: dict[str, DeviceSpec] = {"h100": H100_SXM, "h200": H200}


def gpu_spec_for(device_name: str) -> DeviceSpec | None:
    """Match a CUDA device name to a known spec: 'NVIDIA H100 80GB HBM3' (SXM) and
    'NVIDIA H200'. The PCIe, NVL and Grace-Hopper (GH200) parts share the names but not
    the numbers (fewer SMs, lower clocks or power, other memory), so they get None
    rather than SXM figures that would make every efficiency wrong."""
    n = device_name.lower()
    if any(part in n for part in ("pcie", "nvl", "gh200")):
        return None
    if "h200" in n:
        return H200
    if "h100" in n:
        return H100_SXM
    return None


# ---- the CPU probe -------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fingerprint() -> str:
    """What the probe's result depends on: the CPU, the cores we may use, the BLAS."""
    import numpy as np
    from threadpoolctl import threadpool_info

    # numpy's own BLAS (the probe's matmul runs on it), not every BLAS loaded so far:
    # torch or scipy imported first would otherwise give the same machine another key
    blas = [(i.get("internal_api"), i.get("version"), i.get("num_threads"))
            for i in threadpool_info() if i.get("user_api") == "blas"
            and "numpy" in str(i.get("filepath", ""))]
    key = json.dumps([_cpu_model(), len(os.sched_getaffinity(0)), np.__version__, blas,
                      os.environ.get("OPENBLAS_CORETYPE", "")])
    return hashlib.sha1(key.encode()).hexdigest()[:12]


PROBE_VERSION = 2  # bump when the probe changes, so old cached results are re-measured


def probe_cpu(matmul_n: int = 2048, copy_mib: int = 256, repeats: int = 5) -> dict:
    """Measure this CPU's float32 matmul FLOP/s and copy bandwidth (best of repeats).

    Best-of rather than median: a ceiling is what the machine *can* do, and every
    disturbance only makes a sample slower. Bandwidth counts bytes read plus written.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((matmul_n, matmul_n), dtype=np.float32)
    b = rng.standard_normal((matmul_n, matmul_n), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    flops = 2 * matmul_n**3 / best

    # Two STREAM kernels (McCalpin's STREAM benchmark): copy (a -> c, 2 arrays of
    # traffic) and add (a + b -> c, 3 arrays); the ceiling is the faster of the two.
    n = copy_mib * 2**20 // 8
    src, src2, dst = np.ones(n), np.ones(n), np.empty(n)
    kernels = [(lambda: np.copyto(dst, src), 2), (lambda: np.add(src, src2, out=dst), 3)]
    bandwidth = 0.0
    for kernel, arrays in kernels:
        kernel()
        for _ in range(repeats):
            t0 = time.perf_counter()
            kernel()
            bandwidth = max(bandwidth, arrays * src.nbytes / (time.perf_counter() - t0))
    return {"version": PROBE_VERSION, "fp32_flops": flops, "mem_bandwidth": bandwidth,
            "matmul_n": matmul_n,
            "array_bytes": src.nbytes, "probe_date": time.strftime("%Y-%m-%d")}


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mlsys-casebook``; an empty or relative value is ignored, as the
    XDG spec says (an empty one was the working directory: a probe cache in each)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "mlsys-casebook"


def cpu_spec(refresh: bool = False, cache: Path | None = None,
             observed_flops: float = 0.0) -> DeviceSpec:
    """This machine's CPU as a DeviceSpec, from the probe (cached per machine).

    ``observed_flops``: a float32 rate just measured on this machine. A peak below it
    is impossible: a cached probe that says less ran while other work held the cores,
    so we probe again and keep the higher of the two results (a probe can only err
    low), and if that is still below the observed rate, the observed rate is the peak."""
    path = (cache or cache_dir()) / f"cpu-probe-{_fingerprint()}.json"
    probe = None
    if not refresh and path.exists():
        try:
            probe = json.loads(path.read_text())
        except (OSError, ValueError):
            probe = None
        if probe is not None and probe.get("version") != PROBE_VERSION:
            probe = None
    changed = probe is None
    if probe is None:
        probe = probe_cpu()
    elif probe["fp32_flops"] < observed_flops:
        fresh = probe_cpu()
        probe = {**fresh, **{k: max(probe[k], fresh[k])
                             for k in ("fp32_flops", "mem_bandwidth")}}
        changed = True
    if probe["fp32_flops"] < observed_flops:  # this probe, too, ran beside other work
        probe["fp32_flops"], changed = float(observed_flops), True
    if changed:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(probe))
        except OSError:
            pass  # a read-only home is no reason to fail; we just probe again next time
    cores = len(os.sched_getaffinity(0))
    return DeviceSpec(
        name=f"CPU: {_cpu_model()} ({cores} cores)",
        peak_flops={"fp32": probe["fp32_flops"]},
        mem_bandwidth=probe["mem_bandwidth"],
        source=f"measured by common.devices.probe_cpu (matmul n={probe['matmul_n']}, "
               f"STREAM copy/add over {probe['array_bytes'] >> 20} MiB arrays)",
        date=probe["probe_date"],
        extra={"cache_file": str(path)},
    )
