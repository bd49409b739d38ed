"""The fused ApplyAdam kernel that miniflow uses on a GPU (``train/fused_adam.py``), run
by Triton's interpreter on the CPU, against the op-by-op update it replaces."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent("""
    import os
    os.environ["TRITON_INTERPRET"] = "1"  # before triton.jit runs: interpret on the CPU
    from types import SimpleNamespace

    import numpy as np
    import torch

    from systems.miniflow.backend import NUMPY
    from systems.miniflow.dtypes import float32
    from systems.miniflow.train.training_ops import _adam, _adam_cuda

    rng = np.random.default_rng(0)
    shape = (37, 29)  # 1073 elements: not a multiple of the block, so the mask matters
    w, m, g = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    v = rng.random(shape).astype(np.float32)
    hyper = [np.float32(x) for x in (0.9 ** 3, 0.999 ** 3, 0.01, 0.9, 0.999, 1e-8)]
    attrs = {"var_name": "w", "m": "m", "v": "v", "dtype": float32}

    ref = SimpleNamespace(variables={"w": w.copy(), "m": m.copy(), "v": v.copy()})
    _adam(attrs, NUMPY, ref)(None, None, None, *hyper, g)

    fused = SimpleNamespace(variables={k: torch.from_numpy(a.copy())
                                       for k, a in (("w", w), ("m", m), ("v", v))})
    before = dict(fused.variables)
    g_view = torch.from_numpy(np.ascontiguousarray(g.T)).T  # a non-contiguous gradient
    out = _adam_cuda(attrs, fused)(None, None, None, *[torch.tensor(h) for h in hyper],
                                   g_view)
    assert out is fused.variables["w"]
    for k in ("w", "m", "v"):
        np.testing.assert_allclose(fused.variables[k].numpy(), ref.variables[k],
                                   rtol=1e-5, atol=1e-7, err_msg=k)
    # an assignment replaces the stored value: what was read before is unchanged
    np.testing.assert_array_equal(before["w"].numpy(), w)
    np.testing.assert_array_equal(before["m"].numpy(), m)
    print("ok")
""")


def test_fused_adam_kernel_matches_the_op_by_op_update():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
