"""Every softmax/layernorm sketch's kernel, under the interpreter, equals torch."""

import pytest
import torch

from systems.miniansor.annotation import enumerate_space
from systems.miniansor.sketch import generate_sketches, run_program
from systems.miniansor.workloads import check_output, layernorm, softmax

from .sketches import check_random_annotations, sketch_cases

TASKS = [softmax(13, 100), softmax(5, 3000), layernorm(13, 100), layernorm(6, 1500)]


@pytest.mark.parametrize("task,sketch", sketch_cases(TASKS))
def test_every_row_sketch_matches_torch_with_random_annotations(task, sketch):
    check_random_annotations(task, sketch)


def test_long_rows_get_the_looped_sketch_and_short_rows_the_multi_row_one():
    assert {s.name for s in generate_sketches(softmax(4, 100))} == {"row.one", "row.multi"}
    assert {s.name for s in generate_sketches(softmax(4, 3000))} == {"row.one", "row.looped"}
    assert {s.name for s in generate_sketches(softmax(4, 40000))} == {"row.looped"}


def test_layernorm_weight_and_bias_are_checked_and_strided_views_read_right():
    task = layernorm(4, 16, "fp32")
    torch.manual_seed(0)  # the same weights every run: a failure can be replayed
    for sk in generate_sketches(task):
        if not enumerate_space(task, sk):
            continue  # 16-element rows, one per program: lanes would idle
        ann = enumerate_space(task, sk)[0]
        inputs = task.make_inputs(seed=0)
        inputs["weight"], inputs["bias"] = torch.randn(16, 3)[:, 1], torch.randn(16, 3)[:, 2]
        assert check_output(task, run_program(task, sk, ann, inputs),
                            task.reference(inputs)) is None, sk.name
        with pytest.raises(ValueError, match=r"input weight\(5,\) does not match \(16,\)"):
            run_program(task, sk, ann, {**inputs, "weight": torch.randn(5)})
