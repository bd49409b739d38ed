"""miniansor tests run every Triton kernel under Triton's interpreter on the CPU.

``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a function, so it must be
set before any kernel module is imported; this file is loaded before the tests are.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
