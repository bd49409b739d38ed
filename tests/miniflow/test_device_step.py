"""What one training step asks of a GPU, counted on the pretend GPU (torch on the CPU).

A miniflow step on a GPU is bound by the host: each torch call costs host time (tens of
microseconds on the benchmark machine, more than most of its kernels), a read of a
device tensor on the host (``.cpu()``, ``.item()``, ``.tolist()``) waits for the GPU, and
so does a copy of pageable host memory to it. So these tests count, for the digits MLP
and CNN with every op on /gpu:0 as the ``gpu-step`` benchmark runs them, the torch
operators a step dispatches (a ``TorchDispatchMode``), its reads back and its uploads.
The fused Adam kernel (Triton) is replaced by a stand-in that counts its launches.
"""

import collections

import numpy as np
import pytest
import torch

from common.opcount import OpCounter
from systems.miniflow import digits
from systems.miniflow.session import Session
from systems.miniflow.train import fused_adam, training_ops

from .test_cross_device import pretend_gpu

# Torch operators per step at batch 256 (launches plus metadata calls such as permute),
# and Triton launches. Before the host-side work of 2026-11-27 the counts were 69 and 145,
# with three reads back per CNN step; PyTorch's own eager steps take about 54 and 67.
# (ReluGrad keeps TF's multiply, two ops where threshold_backward is one: see backend.py;
# the pretend GPU's tensors live on the CPU, where the CNN's one-channel input is made
# NCHW by two views where one permute was, and the first conv's output, NCHW then, is
# copied to NHWC, 80 where a real GPU dispatches 78: see TorchConv.conv2d in conv.py.)
MAX_TORCH_OPS = {"mlp": 34, "cnn": 80}
N_VARIABLES = {"mlp": 4, "cnn": 6}


class _AdamKernel:
    """Stands in for ``fused_adam._apply_adam_kernel``: the same update in torch, counted
    as one launch and not as the operators it takes here."""

    def __init__(self, counter: OpCounter):
        self.counter, self.launches = counter, 0

    def __getitem__(self, grid):
        def launch(w, m, v, g, new_w, new_m, new_v, b1_power, b2_power, lr, b1, b2, eps, n,
                   BLOCK):  # noqa: N803 (Triton's constexpr name)
            self.launches += 1
            self.counter.paused = True
            try:
                lr_t = lr * torch.sqrt(1 - b2_power) / (1 - b1_power)
                new_m.copy_(m + (g - m) * (1 - b1))
                new_v.copy_(v + (g * g - v) * (1 - b2))
                new_w.copy_(w - lr_t * new_m / (torch.sqrt(new_v) + eps))
            finally:
                self.counter.paused = False
        return launch


def _count_step(monkeypatch, model: str, batch: int | None):
    """Train three steps on the pretend GPU, then count the fourth; also the loss after
    it, for comparison with numpy."""
    pretend_gpu(monkeypatch)
    counter = OpCounter()
    kernel = _AdamKernel(counter)
    monkeypatch.setattr(training_ops, "FUSED_ADAM_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(fused_adam, "_apply_adam_kernel", kernel)
    seen: collections.Counter = collections.Counter()
    counting = [False]

    def spy(owner, name, what, when=lambda *a, **k: True):
        real = getattr(owner, name)

        def method(*args, **kwargs):
            if counting[0] and when(*args, **kwargs):
                seen[what] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(owner, name, method)

    for name in ("cpu", "item", "tolist"):  # each one a wait for the GPU on CUDA
        spy(torch.Tensor, name, "read back")
    for name in ("from_numpy", "tensor"):
        spy(torch, name, "upload")
    spy(torch, "as_tensor", "upload", lambda x, *a, **k: not isinstance(x, torch.Tensor))

    Xtr, _, ytr, _ = digits.load_split()
    m = digits.build(model, "cuda", batch=batch)
    with Session(graph=m["graph"]) as s:
        s.run(m["init"])
        feed = {m["x"]: Xtr[:256], m["y"]: ytr[:256]}
        for _ in range(3):
            s.run(m["train"], feed)
        kernel.launches = 0
        counting[0] = True
        with counter:
            s.run(m["train"], feed)
        counting[0] = False
        loss = float(s.run(m["loss"], feed))
    return counter.ops, seen, kernel.launches, loss


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("batch", [256, None])
def test_a_step_never_reads_a_device_tensor_back(monkeypatch, model, batch):
    # The CNN read three folded shapes back per step (Conv2DBackprop*'s sizes): now they
    # are host-memory inputs, and the constants feeding them stay on the host
    ops, seen, _, _ = _count_step(monkeypatch, model, batch)
    assert seen["read back"] == 0
    assert ops["_local_scalar_dense"] == 0  # .item() or bool() of a tensor


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("batch", [256, None])
def test_a_step_uploads_its_feeds_and_nothing_else(monkeypatch, model, batch):
    # Constants were uploaded when the plan was built, once per session (TF's ConstantOp
    # makes its tensor once, when the kernel is constructed). With an unknown batch the
    # mean's gradient also casts the batch size, a host int32 (Size), to a float on the
    # GPU: one upload of four bytes, as TF's GPU Cast would need too.
    _, seen, _, _ = _count_step(monkeypatch, model, batch)
    assert seen["upload"] == (2 if batch else 3)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_a_step_dispatches_a_bounded_number_of_torch_ops(monkeypatch, model):
    ops, _, launches, _ = _count_step(monkeypatch, model, 256)
    assert sum(ops.values()) <= MAX_TORCH_OPS[model], ops
    assert launches == N_VARIABLES[model]  # one fused Adam kernel per variable
    if model == "cnn":  # the max-pool gradients reuse the forward's argmax
        assert ops["max_pool2d_with_indices"] == 2, ops


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_the_counted_step_trains_as_numpy_does(monkeypatch, model):
    *_, got = _count_step(monkeypatch, model, 256)
    Xtr, _, ytr, _ = digits.load_split()
    m = digits.build(model, "cpu", batch=256)
    with Session(graph=m["graph"]) as s:
        s.run(m["init"])
        feed = {m["x"]: Xtr[:256], m["y"]: ytr[:256]}
        for _ in range(4):
            s.run(m["train"], feed)
        want = float(s.run(m["loss"], feed))
    np.testing.assert_allclose(got, want, rtol=2e-5)
