"""Values crossing between /cpu:0 (numpy) and /gpu:0 (torch), checked without a GPU.

The first run on a real GPU (2026-11-27) failed in three ways no CPU test had seen: numpy
cannot read a CUDA tensor in place, a host scalar has no ``.to``, and variables were
placed differently by different runs. Here /gpu:0 is a torch backend on the CPU whose
tensors, like CUDA tensors, refuse numpy's implicit conversion: only what went through
``.cpu()`` may become a numpy array. The dataflow machinery (placement, partitioning,
Send/Recv, the executors) is the real one; only the device's memory is pretended.
"""

import numpy as np
import pytest
import torch

from systems.miniflow import digits
from systems.miniflow import plan as plan_module
from systems.miniflow import session as session_module
from systems.miniflow.backend_torch import torch_backend


def pretend_gpu(monkeypatch) -> None:
    """Make /gpu:0 exist, backed by torch on the CPU, with CUDA's conversion rules."""
    real_backend_for, real_array, real_numpy, real_cpu = (
        plan_module.backend_for, torch.Tensor.__array__, torch.Tensor.numpy, torch.Tensor.cpu)

    def backend_for(device, cpu_backend):
        return torch_backend("cpu") if device.startswith("/gpu") else \
            real_backend_for(device, cpu_backend)

    def on_host(t):
        return getattr(t, "_on_host", False)

    def refuse(name, real):
        def method(self, *args, **kwargs):
            if not on_host(self):
                raise TypeError(f"can't convert a device tensor with {name} (pretend GPU)")
            return real(self, *args, **kwargs)
        return method

    def cpu(self, *args, **kwargs):
        t = real_cpu(self, *args, **kwargs).clone()
        t._on_host = True
        return t

    monkeypatch.setattr(plan_module, "backend_for", backend_for)
    monkeypatch.setattr(session_module, "backend_for", backend_for)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.Tensor, "__array__", refuse("__array__", real_array))
    monkeypatch.setattr(torch.Tensor, "numpy", refuse("numpy()", real_numpy))
    monkeypatch.setattr(torch.Tensor, "cpu", cpu)


def _train(model: str, dev: str, config=None, batch: int | None = None) -> float:
    Xtr, _, ytr, _ = digits.load_split()
    m = digits.build(model, dev, batch=batch)
    with session_module.Session(graph=m["graph"], config=config) as s:
        s.run(m["init"])
        feed = {m["x"]: Xtr[:64], m["y"]: ytr[:64]}
        for _ in range(3):
            s.run(m["train"], feed)
        return float(s.run(m["loss"], feed))


@pytest.mark.parametrize("model,batch", [("mlp", None), ("cnn", None), ("cnn", 64)])
def test_training_on_the_pretend_gpu_matches_numpy(model, batch):
    # batch=64 declares the batch, as the GPU benchmark does: the mean's gradient then
    # folds to constants made on the host, which the GPU partition must take in
    want = _train(model, "cpu")
    with pytest.MonkeyPatch.context() as mp:
        pretend_gpu(mp)
        got = _train(model, "cuda", batch=batch)
    assert abs(got - want) <= 1e-5 * abs(want)


def test_an_unpinned_model_split_across_the_pretend_gpu_matches_numpy():
    # nothing pinned: the placer puts some ops on /gpu:0 and some on /cpu:0, so values
    # and variables cross the boundary in both directions
    want = _train("mlp", "cpu", session_module.ConfigProto(device_count={"GPU": 0}))
    with pytest.MonkeyPatch.context() as mp:
        pretend_gpu(mp)
        got = _train("mlp", "cpu")
    assert abs(got - want) <= 1e-5 * abs(want)


def test_the_pretend_gpu_refuses_what_a_cuda_tensor_refuses(monkeypatch):
    pretend_gpu(monkeypatch)
    t = torch.ones(3)
    with pytest.raises(TypeError, match="pretend GPU"):
        np.asarray(t)
    np.testing.assert_array_equal(np.asarray(t.cpu()), np.ones(3))


def test_shapes_that_gpu_kernels_read_on_the_host_stay_on_the_host(monkeypatch):
    # TF keeps int32 shape arguments in host memory (HostMemory("shape") on Reshape's GPU
    # kernel, reshape_op.cc): a folded constant shape and a shape received from /cpu:0
    # are never uploaded, and reading them never waits for the GPU
    import systems.miniflow as mf

    pretend_gpu(monkeypatch)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 6], name="x")
        with mf.device("/cpu:0"):
            n = mf.shape(x)
        with mf.device("/gpu:0"):
            folded = mf.constant(np.array([3, 4], np.int32)) + 0  # a Const after folding
            y = mf.reduce_sum(mf.reshape(x, folded), 0) + mf.reshape(mf.tanh(x), n)[0, :4]
    seen = {"cpu": 0, "upload": 0}
    real_cpu, real_from_numpy = torch.Tensor.cpu, torch.from_numpy

    def cpu(self, *args, **kwargs):
        seen["cpu"] += 1
        return real_cpu(self, *args, **kwargs)

    def from_numpy(a):
        seen["upload"] += 1
        return real_from_numpy(a)

    xv = np.arange(12, dtype=np.float32).reshape(2, 6) / 12
    with session_module.Session(graph=g) as s:
        s.run(y, {x: xv})
        assert s.plan_for(y, {x: None}).devices == ["/cpu:0", "/gpu:0"]
        monkeypatch.setattr(torch.Tensor, "cpu", cpu)
        monkeypatch.setattr(torch, "from_numpy", from_numpy)
        got = s.run(y, {x: xv})
    np.testing.assert_allclose(got, xv.reshape(3, 4).sum(0) + np.tanh(xv)[0, :4], rtol=1e-6)
    assert seen == {"cpu": 1, "upload": 1}  # the fetched result; the fed x
