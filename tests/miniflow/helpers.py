"""Shared helpers and hypothesis strategies for the miniflow tests (as minitorch's
tests/strategies.py): run a graph on a chosen backend, and compare with torch."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

import systems.miniflow as mf

BACKENDS = ["numpy", "torch"]


def session(graph, backend="numpy", **config):
    """On the torch backend, constant folding is off unless a test asks for it: the plan
    folds constants with the numpy kernels (as TF folds on the host), so a torch test
    built on constants would never run a torch kernel."""
    if backend == "torch":
        config.setdefault("graph_options", mf.GraphOptions(constant_folding=False))
    return mf.Session(graph=graph, config=mf.ConfigProto(cpu_backend=backend, **config))


def evaluate(graph, fetches, feeds=None, backend="numpy", **config):
    with session(graph, backend, **config) as s:
        s.run(mf.global_variables_initializer())
        return s.run(fetches, feeds or {})


@st.composite
def shapes(draw, min_dims=1, max_dims=3, max_side=4):
    return tuple(draw(st.lists(st.integers(1, max_side), min_size=min_dims,
                               max_size=max_dims)))


@st.composite
def broadcastable_pair(draw):
    """Two shapes that numpy can broadcast: drop leading dims and set some to 1."""
    full = draw(shapes(1, 3))
    def variant():
        s = list(full[draw(st.integers(0, len(full) - 1)):])
        return tuple(1 if draw(st.booleans()) else d for d in s)
    return full if draw(st.booleans()) else variant(), variant()


def arrays(rng, shape, low=-2.0, high=2.0, dtype=np.float64):
    return rng.uniform(low, high, size=shape).astype(dtype)


def torch_grads(fn, inputs, weights):
    """d(sum(fn(*inputs) * weights)) / d(inputs) by torch autograd, in float64."""
    ts = [torch.tensor(x, requires_grad=True) for x in inputs]
    out = fn(*ts)
    (out * torch.tensor(weights)).sum().backward()
    return out.detach().numpy(), [t.grad.numpy() if t.grad is not None else None for t in ts]


def mf_grads(build, inputs, weights, backend="numpy"):
    """The same through miniflow: placeholders in, mf.gradients out. The weights are fed
    too: as constants, the gradient of an op whose gradient does not depend on its input
    (transpose, slice, avg_pool, ...) would be constant-folded at plan time, by the numpy
    kernel, and the torch backend's gradient kernel would never run."""
    g = mf.Graph()
    with g.as_default():
        phs = [mf.placeholder(mf.float64, x.shape) for x in inputs]
        out = build(*phs)
        w = mf.placeholder(mf.float64, np.shape(weights))
        loss = mf.reduce_sum(out * w)
        grads = mf.gradients(loss, phs)
    fetch = [out] + [gr for gr in grads if gr is not None]
    feeds = dict(zip(phs, inputs, strict=True))
    feeds[w] = np.asarray(weights, np.float64)
    vals = evaluate(g, fetch, feeds, backend)
    it = iter(vals[1:])
    return vals[0], [next(it) if gr is not None else None for gr in grads]


def check_against_torch(name, mf_fn, torch_fn, inputs, backend, seed=0, rtol=1e-6):
    """Forward and every input's gradient of ``sum(w * f(inputs))``, ``w`` random (from
    ``seed + 1``), through miniflow on ``backend`` against torch autograd."""
    out_t, _ = torch_grads(torch_fn, inputs, 1.0)
    weights = arrays(np.random.default_rng(seed + 1), np.shape(out_t))
    out_t, grads_t = torch_grads(torch_fn, inputs, weights)
    out_m, grads_m = mf_grads(mf_fn, inputs, weights, backend)
    np.testing.assert_allclose(out_m, out_t, rtol=rtol, atol=1e-9, err_msg=f"{name} forward")
    for i, (gm, gt) in enumerate(zip(grads_m, grads_t, strict=True)):
        np.testing.assert_allclose(gm, gt, rtol=rtol, atol=1e-9,
                                   err_msg=f"{name} gradient of input {i}")
