"""``ApplyAdam`` on a GPU as one fused kernel (Triton).

TensorFlow's GPU ``ApplyAdam`` is one hand-written CUDA kernel (``ApplyAdamKernel``,
launched by the ``ApplyAdam<GPUDevice, T>`` functor in
``tensorflow/core/kernels/training_ops_gpu.cu.cc``): one pass that reads the variable,
its two slots and the gradient and writes all three. Written with torch ops instead,
the same update is about 17 small kernel launches per variable (``training_ops._adam``),
and a miniflow training step on a GPU is bound by launches, not arithmetic: the CNN's
six variables spent more host time in their updates than the GPU spent on the whole
step (profile of 2026-11-27, ``docs/results/miniflow/cuda/profile.txt``).

The kernel computes exactly ``training_ops._adam``'s formula, in float32:

    lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
    m    = m + (g - m) * (1 - beta1)
    v    = v + (g * g - v) * (1 - beta2)
    var  = var - lr_t * m / (sqrt(v) + eps)

and writes *new* tensors for var, m and v rather than updating in place, because a
miniflow assignment replaces the stored value (a value read earlier in the step must not
change under its reader; see ``ops/state_ops.py``). The scalars stay on the device (they
are graph tensors there), so nothing waits for a device-to-host copy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _apply_adam_kernel(var_ptr, m_ptr, v_ptr, g_ptr, new_var_ptr, new_m_ptr, new_v_ptr,
                       b1_power_ptr, b2_power_ptr, lr_ptr, b1_ptr, b2_ptr, eps_ptr, n,
                       BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    b1, b2, eps = tl.load(b1_ptr), tl.load(b2_ptr), tl.load(eps_ptr)
    lr_t = tl.load(lr_ptr) * tl.sqrt(1 - tl.load(b2_power_ptr)) / (1 - tl.load(b1_power_ptr))
    g = tl.load(g_ptr + offs, mask=mask)
    m = tl.load(m_ptr + offs, mask=mask)
    v = tl.load(v_ptr + offs, mask=mask)
    w = tl.load(var_ptr + offs, mask=mask)
    m = m + (g - m) * (1 - b1)
    v = v + (g * g - v) * (1 - b2)
    w = w - lr_t * m / (tl.sqrt(v) + eps)
    tl.store(new_m_ptr + offs, m, mask=mask)
    tl.store(new_v_ptr + offs, v, mask=mask)
    tl.store(new_var_ptr + offs, w, mask=mask)


def apply_adam(var, m, v, grad, beta1_power, beta2_power, lr, beta1, beta2, eps):
    """New (var, m, v) for float32 torch tensors on one device; scalars are 0-d or
    one-element float32 tensors on the same device (a Python number is converted).

    On a GPU every torch call here is host time (tens of microseconds each, more than the
    kernel), so nothing is converted that is already right: the scalars arrive as
    float32 device tensors (graph constants, uploaded once; the beta powers are
    variables), which the kernel reads through their pointers whatever their shape."""
    var, m, v, grad = (t.contiguous() for t in (var, m, v, grad))
    scalars = [s if isinstance(s, torch.Tensor) and s.dtype is torch.float32 else
               torch.as_tensor(s, dtype=torch.float32, device=var.device)
               for s in (beta1_power, beta2_power, lr, beta1, beta2, eps)]
    # the three results in one allocation (two torch calls instead of three). They share
    # it: until the next step replaces all three, an assignment to the variable alone
    # (a restore, say) leaves m and v holding the whole block, three times its size.
    new_var, new_m, new_v = torch.empty((3, *var.shape), dtype=var.dtype,
                                        device=var.device).unbind(0)
    n = var.numel()
    _apply_adam_kernel[(triton.cdiv(n, BLOCK),)](var, m, v, grad, new_var, new_m, new_v,
                                                 *scalars, n, BLOCK=BLOCK)
    return new_var, new_m, new_v
