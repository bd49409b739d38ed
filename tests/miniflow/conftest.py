"""Without a GPU, every Triton kernel these tests reach runs under Triton's interpreter.

``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a function, and one process
cannot mix the modes: once ``test_device_step.py`` had imported the fused Adam kernel
with the variable unset, the interpreted miniansor kernels of ``test_tuned.py`` failed
("Cannot call @triton.jit'd outside of the scope of a kernel"). So it is set here, before
any test module is imported, as ``tests/miniansor/conftest.py`` does.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
