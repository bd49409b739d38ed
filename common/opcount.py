"""Count the PyTorch operators a piece of code dispatches.

On a GPU driven from Python, each operator costs host time (the dispatcher, and a kernel
launch for most), often more than the kernel itself; counting them is how the casebook
checks, without a GPU, that a change removed launches (miniflow's device-step tests, the
GPU profile script). ``TorchDispatchMode`` sees every aten operator once, below autograd,
whatever the device.
"""

from __future__ import annotations

import collections

from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as c: ...`` then ``c.ops`` maps operator names (``mm``,
    ``addmm``...) to counts. Set ``paused`` to leave work out (e.g. a stand-in for a
    kernel that would be one launch on a GPU)."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused:
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))
