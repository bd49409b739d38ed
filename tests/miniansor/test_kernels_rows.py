"""Every softmax/layernorm sketch's kernel, under the interpreter, equals torch."""

import pytest

from systems.miniansor.sketch import generate_sketches
from systems.miniansor.workloads import layernorm, softmax

from .sketches import check_random_annotations, sketch_cases

TASKS = [softmax(13, 100), softmax(5, 3000), layernorm(13, 100), layernorm(6, 1500)]


@pytest.mark.parametrize("task,sketch", sketch_cases(TASKS))
def test_every_row_sketch_matches_torch_with_random_annotations(task, sketch):
    check_random_annotations(task, sketch)


def test_long_rows_get_the_looped_sketch_and_short_rows_the_multi_row_one():
    assert {s.name for s in generate_sketches(softmax(4, 100))} == {"row.one", "row.multi"}
    assert {s.name for s in generate_sketches(softmax(4, 3000))} == {"row.one", "row.looped"}
    assert {s.name for s in generate_sketches(softmax(4, 40000))} == {"row.looped"}
