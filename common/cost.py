"""How much work an op is, and how fast it could possibly run on a device.

An op's cost is three numbers: floating-point operations, bytes it must read, bytes it
must write (each input read once, each output written once: the *minimum* traffic; a
real kernel moves at least this much). From them and a :class:`DeviceSpec` the roofline
model gives a lower bound on time:

    t >= max(flops / peak_flops, bytes / bandwidth)

The ratio flops/bytes is the op's *arithmetic intensity*. Below the device's *ridge
point* (peak / bandwidth) the op is memory-bound: no kernel can make it compute-bound,
only fusion (fewer bytes) can help. Above it, the op is compute-bound. Williams et al.,
"Roofline", CACM 2009.

MFU (model FLOPs utilisation) is achieved model FLOP/s over the device's peak, as
defined in PaLM (Chowdhery et al. 2022, appendix B): count the model's FLOPs, not the
hardware's (recomputation does not count as useful work).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .devices import DeviceSpec

DTYPE_BYTES = {"fp64": 8, "fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int32": 4,
               "int64": 8, "int8": 1, "bool": 1}


@dataclass(frozen=True)
class OpCost:
    flops: float
    bytes_read: float
    bytes_written: float
    name: str = ""
    dtype: str = "fp32"

    @property
    def bytes(self) -> float:
        return self.bytes_read + self.bytes_written

    @property
    def intensity(self) -> float:
        """FLOPs per byte of minimum memory traffic."""
        return self.flops / self.bytes if self.bytes else math.inf

    def __add__(self, other: OpCost) -> OpCost:
        """Cost of running two ops as separate kernels (their traffic adds up)."""
        return OpCost(self.flops + other.flops, self.bytes_read + other.bytes_read,
                      self.bytes_written + other.bytes_written,
                      f"{self.name}+{other.name}", self.dtype)


def _b(dtype: str) -> int:
    return DTYPE_BYTES[dtype]


def matmul_cost(m: int, n: int, k: int, dtype: str = "fp32", batch: int = 1,
                out_dtype: str | None = None) -> OpCost:
    """C[m,n] = A[m,k] @ B[k,n]: one multiply and one add per (i, j, k): 2mnk FLOPs."""
    out = out_dtype or dtype
    return OpCost(2.0 * batch * m * n * k,
                  batch * (m * k + k * n) * _b(dtype),
                  batch * m * n * _b(out),
                  f"matmul {m}x{n}x{k}", dtype)


def elementwise_cost(numel: int, n_inputs: int = 1, flops_per_element: float = 1.0,
                     dtype: str = "fp32") -> OpCost:
    """y = f(x1, ..., xk) elementwise: reads k tensors, writes one."""
    return OpCost(flops_per_element * numel, n_inputs * numel * _b(dtype), numel * _b(dtype),
                  "elementwise", dtype)


def reduction_cost(numel: int, numel_out: int, dtype: str = "fp32") -> OpCost:
    """Sum/max over axes: one FLOP per input element."""
    return OpCost(float(numel), numel * _b(dtype), numel_out * _b(dtype), "reduction", dtype)


def softmax_cost(rows: int, cols: int, dtype: str = "fp32") -> OpCost:
    """Row softmax: max, subtract, exp, sum, divide: ~5 FLOPs per element (exp counted
    as one, as is usual; on a GPU it is a special-function-unit op). Fused, it reads
    the input once and writes the output once."""
    n = rows * cols
    return OpCost(5.0 * n, n * _b(dtype), n * _b(dtype), f"softmax {rows}x{cols}", dtype)


def layernorm_cost(rows: int, cols: int, dtype: str = "fp32", affine: bool = True) -> OpCost:
    """LayerNorm over the last axis: mean, variance, normalise, scale and shift,
    ~8 FLOPs per element; reads x (and gamma, beta once), writes y."""
    n = rows * cols
    params = 2 * cols * _b(dtype) if affine else 0
    return OpCost(8.0 * n, n * _b(dtype) + params, n * _b(dtype),
                  f"layernorm {rows}x{cols}", dtype)


def conv2d_cost(batch: int, c_in: int, h: int, w: int, c_out: int, kh: int, kw: int,
                stride: int = 1, padding: int = 0, dtype: str = "fp32") -> OpCost:
    """NCHW convolution: each output element is a dot product of length c_in*kh*kw."""
    ho = (h + 2 * padding - kh) // stride + 1 if stride >= 1 else 0
    wo = (w + 2 * padding - kw) // stride + 1 if stride >= 1 else 0
    if ho < 1 or wo < 1:  # two negative sizes would multiply to a positive cost
        raise ValueError(f"conv2d: a {kh}x{kw} kernel at stride {stride} does not fit the "
                         f"{h + 2 * padding}x{w + 2 * padding} padded input")
    flops = 2.0 * batch * c_out * ho * wo * c_in * kh * kw
    read = (batch * c_in * h * w + c_out * c_in * kh * kw) * _b(dtype)
    written = batch * c_out * ho * wo * _b(dtype)
    return OpCost(flops, read, written, f"conv2d {c_in}->{c_out} {kh}x{kw}", dtype)


@dataclass(frozen=True)
class Roofline:
    intensity: float  # FLOP/byte of the op
    ridge: float  # FLOP/byte where the device's two ceilings meet
    attainable_flops: float  # min(peak, intensity * bandwidth)
    lower_bound_s: float  # max(compute time, memory time)
    bound: str  # "compute" or "memory"
    compute_s: float
    memory_s: float


def roofline(op: OpCost, device: DeviceSpec, dtype: str | None = None) -> Roofline:
    """Where ``op`` sits on ``device``'s roofline, and the fastest it could run."""
    peak = device.peak(dtype or op.dtype)
    compute_s = op.flops / peak
    memory_s = op.bytes / device.mem_bandwidth
    ridge = peak / device.mem_bandwidth
    return Roofline(
        intensity=op.intensity,
        ridge=ridge,
        attainable_flops=min(peak, op.intensity * device.mem_bandwidth),
        lower_bound_s=max(compute_s, memory_s),
        bound="compute" if compute_s >= memory_s else "memory",
        compute_s=compute_s,
        memory_s=memory_s,
    )


def efficiency(op: OpCost, device: DeviceSpec, measured_s: float,
               dtype: str | None = None) -> float:
    """Fraction of the roofline reached: lower-bound time over measured time (<= 1)."""
    return roofline(op, device, dtype).lower_bound_s / measured_s


def achieved_bandwidth(op: OpCost, measured_s: float) -> float:
    return op.bytes / measured_s


def mfu(model_flops: float, seconds: float, device: DeviceSpec, dtype: str = "fp32",
        n_devices: int = 1) -> float:
    """Model FLOPs utilisation: (model FLOPs / s) / (peak FLOP/s of all devices used)."""
    return model_flops / seconds / (device.peak(dtype) * n_devices)


# The issue's `common.cost` namespace also holds the device table and the money helpers;
# they live in their own modules (one concept each) and are re-exported here.
from .devices import DEVICES, H100_SXM, H200, cpu_spec  # noqa: E402,F401
from .money import (  # noqa: E402,F401
    PRICES,
    pareto_front,
    usd_per_million_inferences,
    usd_per_training_run,
)
