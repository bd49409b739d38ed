"""Deliberately bad kernel templates, for the tests of failure handling.

Each has the launcher signature ``(task, cfg, inputs) -> tensor`` and is named in a
sketch as ``"tests.miniansor.faulty:<function>"``.
"""

import time

import torch
import triton
import triton.language as tl


@triton.jit
def _wild_read(x_ptr, y_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK) + (1 << 30)  # ~1-2 GiB past the input: unmapped memory
    tl.store(y_ptr + tl.arange(0, BLOCK), tl.load(x_ptr + offs))


def launch_segfault(task, cfg, inputs):
    """Reads far out of bounds: under the interpreter this kills the process."""
    x = inputs["x"]
    y = x.new_empty(16)
    _wild_read[(1,)](x, y, BLOCK=16)
    return y


def launch_hang(task, cfg, inputs):
    """Never finishes (as a kernel stuck in a loop would)."""
    time.sleep(3600)
    return inputs["x"]


def launch_wrong(task, cfg, inputs):
    """Runs, but returns a wrong answer."""
    return torch.zeros_like(task.reference(inputs))


def launch_bad_compile(task, cfg, inputs):
    """A kernel Triton refuses: tl.arange needs a power-of-two length."""
    _wild_read[(1,)](inputs["x"], inputs["x"], BLOCK=12)
    return inputs["x"]


@triton.jit
def _descriptor_copy(x_ptr, y_ptr, offset, BLOCK: tl.constexpr):
    desc = tl.make_tensor_descriptor(x_ptr + offset, shape=[BLOCK], strides=[1],
                                     block_shape=[BLOCK])
    tl.store(y_ptr + tl.arange(0, BLOCK), desc.load([0]))


def launch_misaligned(task, cfg, inputs):
    """Compiles, then fails as it runs: a tensor descriptor's base must be 16-byte
    aligned, and only the pointer's value at run time (here 4 bytes off) breaks that."""
    x = inputs["x"]
    y = x.new_empty(16)
    _descriptor_copy[(1,)](x, y, 1, BLOCK=16)
    return y


def launch_cuda_fault(task, cfg, inputs):
    """Fails as a kernel that faults on a GPU does, with torch's message for a poisoned
    context (raised by hand, so that a CPU can test what the worker does after one)."""
    raise RuntimeError("CUDA error: an illegal memory access was encountered")
