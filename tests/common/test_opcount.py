"""common.opcount counts the aten operators a block dispatches, and leaves out what runs
while it is paused."""

import torch

from common.opcount import OpCounter


def test_counts_each_dispatched_operator_and_skips_paused_work():
    a, b = torch.ones(2, 2), torch.ones(2, 2)
    with OpCounter() as c:
        y = torch.mm(a, b) + 1
        c.paused = True
        torch.relu(y)
        c.paused = False
        torch.relu(y)
    assert c.ops["mm"] == 1 and c.ops["add"] == 1 and c.ops["relu"] == 1
    assert sum(c.ops.values()) == 3
