"""Shared by the kernel tests: every sketch of some tasks, checked against torch with
random annotations."""

import zlib

import numpy as np
import pytest

from systems.miniansor.annotation import sample_annotation
from systems.miniansor.measure import verify_program
from systems.miniansor.sketch import generate_sketches


def sketch_cases(tasks, dtypes=("fp32", "fp16")) -> list:
    """One pytest param per (task in each dtype, sketch), named by both."""
    cases = []
    for task in tasks:
        for dtype in dtypes:
            t = task.with_dtype(dtype)
            cases += [pytest.param(t, sk, id=f"{t.key}-{sk.name}")
                      for sk in generate_sketches(t)]
    return cases


def check_random_annotations(task, sketch, n: int = 2, min_tile: int = 0) -> None:
    """Run ``sketch`` with ``n`` seeded random annotations at full size against torch;
    ``verify_program`` raises DeviceFault on a mismatch. ``min_tile``: redraw GEMM
    annotations whose BLOCK_M x BLOCK_N is smaller (the interpreter spends ~10 ms a
    program, so a big task is run with big tiles only)."""
    rng = np.random.default_rng(zlib.crc32(f"{task.key}{sketch.name}".encode()))
    for _ in range(n):
        for _ in range(100):
            ann = sample_annotation(task, sketch, rng)
            if ann is None or ann.get("BLOCK_M", 1) * ann.get("BLOCK_N", 1) >= min_tile:
                break
        assert ann is not None, f"{sketch.name} has no valid annotation for {task.key}"
        assert ann.get("BLOCK_M", 1) * ann.get("BLOCK_N", 1) >= min_tile, ann
        verify_program(task, sketch, ann, proxy=False)
