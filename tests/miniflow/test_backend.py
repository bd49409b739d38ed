"""The backend seam where values cross devices: a torch tensor arriving at the numpy CPU
executor, and a host value (a count, a shape) arriving at a torch kernel. Both broke the
first run on a real GPU (2026-11-27, H200): numpy cannot read a CUDA tensor in place, and
a numpy scalar has no ``.to``."""

import numpy as np
import pytest
import torch

from systems.miniflow.backend import NUMPY
from systems.miniflow.backend_torch import torch_backend
from systems.miniflow.dtypes import float32


def test_numpy_backend_copies_a_torch_value_to_the_host_explicitly():
    # A tensor that requires grad refuses numpy's implicit conversion, as a CUDA tensor
    # does: the backend must detach and copy instead of calling np.asarray on it.
    t = torch.arange(3.0, requires_grad=True) * 2
    with pytest.raises((TypeError, RuntimeError)):
        np.asarray(t)
    got = NUMPY.to_numpy(t)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, [0.0, 2.0, 4.0])


def test_torch_backend_casts_a_host_scalar_into_a_tensor():
    be = torch_backend("cpu")
    got = be.cast(np.int32(256), float32)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    assert got.item() == 256.0



def test_relu_grad_keeps_a_nan_where_the_unit_is_off_as_tf_does_on_both_backends():
    """TF's ReluGrad multiplies by (features > 0) (relu_op_functor.h), so a NaN or Inf
    upstream gradient stays NaN where the unit is off and check_numerics still sees it;
    a select (torch's threshold_backward) would turn it into 0."""
    g = np.array([np.nan, np.inf, 1.0, np.nan], np.float32)
    x = np.array([-1.0, -2.0, 3.0, 4.0], np.float32)
    with np.errstate(invalid="ignore"):  # inf * 0 is the NaN being tested
        want = g * (x > 0)  # [nan, nan, 1, nan]
        host = NUMPY.relu_grad(g, x)
    got = torch_backend("cpu").relu_grad(torch.from_numpy(g), torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(host, want)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_training_on_the_gpu_matches_the_cpu(model):
    from systems.miniflow import digits
    from systems.miniflow.session import Session

    Xtr, _, ytr, _ = digits.load_split()
    losses = {}
    for dev in ("cpu", "cuda"):
        m = digits.build(model, dev)
        with Session(graph=m["graph"]) as s:
            s.run(m["init"])
            feed = {m["x"]: Xtr[:256], m["y"]: ytr[:256]}
            for _ in range(3):
                s.run(m["train"], feed)
            losses[dev] = float(s.run(m["loss"], feed))
    assert abs(losses["cuda"] - losses["cpu"]) < 1e-3 * abs(losses["cpu"])


def test_the_conv_shape_cache_keeps_a_few_shapes_however_many_batch_sizes_pass():
    """The backend outlives sessions; with a batch of unknown size every size is a new
    shape, and each cached stand-in holds an input-sized tensor: the cache is bounded,
    and a gradient computed after eviction is still right (numpy is the oracle)."""
    from systems.miniflow import conv

    tc = conv.TorchConv(torch)
    rng = np.random.default_rng(0)
    f = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    for n in range(1, 3 * conv.SHAPE_CACHE):
        dy = rng.standard_normal((n, 6, 6, 5)).astype(np.float32)
        got = tc.conv2d_backprop_input((n, 6, 6, 4), torch.from_numpy(f),
                                       torch.from_numpy(dy), (1, 1), "SAME")
        assert len(tc._shapes) <= conv.SHAPE_CACHE
    want = conv.conv2d_backprop_input((n, 6, 6, 4), f, dy, (1, 1), "SAME")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)
