"""Every softmax/layernorm sketch's kernel, under the interpreter, equals torch."""

import zlib

import numpy as np
import pytest

from systems.miniansor.annotation import sample_annotation
from systems.miniansor.measure import verify_program
from systems.miniansor.sketch import generate_sketches
from systems.miniansor.workloads import layernorm, softmax

TASKS = [softmax(13, 100), softmax(5, 3000), layernorm(13, 100), layernorm(6, 1500)]


def _cases():
    for task in TASKS:
        for dtype in ("fp32", "fp16"):
            t = task.with_dtype(dtype)
            for sk in generate_sketches(t):
                yield pytest.param(t, sk, id=f"{t.key}-{sk.name}")


@pytest.mark.parametrize("task,sketch", list(_cases()))
def test_every_row_sketch_matches_torch_with_random_annotations(task, sketch):
    rng = np.random.default_rng(zlib.crc32(f"{task.key}{sketch.name}".encode()))
    for _ in range(2):
        ann = sample_annotation(task, sketch, rng)
        assert ann is not None
        verify_program(task, sketch, ann, proxy=False)


def test_long_rows_get_the_looped_sketch_and_short_rows_the_multi_row_one():
    assert {s.name for s in generate_sketches(softmax(4, 100))} == {"row.one", "row.multi"}
    assert {s.name for s in generate_sketches(softmax(4, 3000))} == {"row.one", "row.looped"}
    assert {s.name for s in generate_sketches(softmax(4, 40000))} == {"row.looped"}
