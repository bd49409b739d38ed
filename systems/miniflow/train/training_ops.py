"""Fused update ops, one per optimizer (tensorflow/core/kernels/training_ops.cc).

TensorFlow does not build ``w - lr * g`` out of elementwise ops for each variable: it has
one kernel per update rule (``ApplyGradientDescent``, ``ApplyMomentum``, ``ApplyAdam``) that
reads the variable and its slots, and writes them, in one node. Each takes the variable's
*reference* as its first input (so the placer colocates it with the variable) and returns
the new value.
"""

from __future__ import annotations

from .. import shapes
from ..dtypes import float32
from ..errors import InvalidArgumentError
from ..op_def import OpDef, define, same_dtype, shape_error
from ..ops.state_ops import _read, variable_lock


def _same_as_var(ins, a):
    return [(ins[0].dtype, ins[0].shape)]


def _gd(a, be, res):
    store, name = res.variables, a["var_name"]

    def apply(handle, lr, grad):
        store[name] = new = be.subtract(_read(store, name), be.multiply(lr, grad))
        return new
    return apply


def _momentum(a, be, res):
    store, name, accum, nesterov = res.variables, a["var_name"], a["accum"], a["use_nesterov"]

    def apply(handle, accum_handle, lr, grad, momentum):
        acc = be.add(be.multiply(_read(store, accum), momentum), grad)
        store[accum] = acc
        step = be.add(grad, be.multiply(acc, momentum)) if nesterov else acc
        store[name] = new = be.subtract(_read(store, name), be.multiply(lr, step))
        return new
    return apply


def _adagrad(a, be, res):
    """accum += g * g;  w -= lr * g / sqrt(accum)  (TF's ApplyAdagrad, training_ops.cc):
    each weight's step shrinks with the squared gradients it has seen."""
    store, name, accum = res.variables, a["var_name"], a["accum"]

    def apply(handle, accum_handle, lr, grad):
        acc = be.add(_read(store, accum), be.multiply(grad, grad))
        store[accum] = acc
        step = be.divide(be.multiply(lr, grad), be.sqrt(acc))
        store[name] = new = be.subtract(_read(store, name), step)
        return new
    return apply


def _rmsprop(a, be, res):
    """ms <- rho ms + (1 - rho) g^2;  mom <- momentum mom + lr g / sqrt(ms + eps);
    w <- w - mom (TF's ApplyRMSProp). Centered (ApplyCenteredRMSProp): also
    mg <- rho mg + (1 - rho) g, and the denominator is sqrt(ms - mg^2 + eps), an estimate
    of the gradient's variance rather than its second moment."""
    store, name, centered = res.variables, a["var_name"], a["centered"]

    def apply(handle, *args):
        (lr, rho, momentum, eps, grad), slots = args[-5:], a["slots"]
        keep = be.subtract(be.asarray(1.0, a["dtype"]), rho)
        ms = be.add(be.multiply(rho, _read(store, slots[0])), be.multiply(keep, be.multiply(
            grad, grad)))
        store[slots[0]] = ms
        denom = ms
        if centered:
            mg = be.add(be.multiply(rho, _read(store, slots[2])), be.multiply(keep, grad))
            store[slots[2]] = mg
            denom = be.subtract(ms, be.multiply(mg, mg))
        step = be.divide(be.multiply(lr, grad), be.sqrt(be.add(denom, eps)))
        mom = be.add(be.multiply(momentum, _read(store, slots[1])), step)
        store[slots[1]] = mom
        store[name] = new = be.subtract(_read(store, name), mom)
        return new
    return apply


# devices whose float32 ApplyAdam is the fused Triton kernel (tests add the pretend GPU)
FUSED_ADAM_DEVICES = ("cuda",)


def _adam(a, be, res):
    store, name, m_name, v_name = res.variables, a["var_name"], a["m"], a["v"]
    if be.name == "torch" and be.device.startswith(FUSED_ADAM_DEVICES) and \
            a["dtype"] == float32:
        return _adam_cuda(a, res)

    def apply(handle, m_h, v_h, beta1_power, beta2_power, lr, beta1, beta2, eps, grad):
        # lr_t folds Adam's bias corrections into the step size (Kingma & Ba, sec. 2).
        lr_t = lr * be.sqrt(1 - beta2_power) / (1 - beta1_power)
        m = be.add(_read(store, m_name), be.multiply(be.subtract(grad, _read(store, m_name)),
                                                     1 - beta1))
        v = be.add(_read(store, v_name), be.multiply(
            be.subtract(be.multiply(grad, grad), _read(store, v_name)), 1 - beta2))
        store[m_name], store[v_name] = m, v
        update = be.divide(be.multiply(lr_t, m), be.add(be.sqrt(v), eps))
        store[name] = new = be.subtract(_read(store, name), update)
        return new
    return apply


def _adam_cuda(a, res):
    """On a CUDA device: the same update as one fused Triton kernel (``fused_adam``)."""
    from .fused_adam import apply_adam

    store, name, m_name, v_name = res.variables, a["var_name"], a["m"], a["v"]

    def apply(handle, m_h, v_h, beta1_power, beta2_power, lr, beta1, beta2, eps, grad):
        new, store[m_name], store[v_name] = apply_adam(
            _read(store, name), _read(store, m_name), _read(store, v_name), grad,
            beta1_power, beta2_power, lr, beta1, beta2, eps)
        store[name] = new
        return new
    return apply


# where each Apply op takes its gradient: (var, lr, grad), (var, accum, lr, grad,
# momentum), (var, m, v, beta1_power, beta2_power, lr, beta1, beta2, eps, grad)
GRAD_INPUT = {"ApplyGradientDescent": 2, "ApplyMomentum": 3, "ApplyAdam": 9, "ApplyAdagrad": 3,
              "ApplyRMSProp": 7, "ApplyCenteredRMSProp": 8}


def _check(op_type):
    def fn(ins, a):
        same_dtype(op_type, ins[0], ins[-1])
        grad = ins[GRAD_INPUT[op_type]]
        if not shapes.compatible(ins[0].shape, grad.shape):  # would broadcast: grow
            raise shape_error(op_type, "the gradient must have the variable's shape",
                              ins[0], grad)
        # proved equal now, or checked when the step runs (see _shape_checked)
        a["check_shape"] = not (shapes.is_fully_defined(grad.shape)
                                and shapes.is_fully_defined(ins[0].shape))
        return _same_as_var(ins, a)
    return fn


def _shape_checked(op_type, make):
    """The run-time half of :func:`_check`, for gradients of statically unknown shape
    (TF: "var and delta do not have the same shape")."""
    def make_checked(a, be, res):
        apply, store, name = make(a, be, res), res.variables, a["var_name"]
        lock = variable_lock(res, name)  # the whole update, slots included, at once
        check = a.get("check_shape", True)  # False: the build proved the shapes equal

        def run(*args):
            with lock:
                if check:
                    var, grad = _read(store, name), args[GRAD_INPUT[op_type]]
                    if tuple(grad.shape) != tuple(var.shape):
                        raise InvalidArgumentError(f"{op_type}: {name} has shape "
                                                   f"{tuple(var.shape)} but its gradient "
                                                   f"{tuple(grad.shape)}")
                return apply(*args)
        return run
    return make_checked


define(OpDef("ApplyGradientDescent", _check("ApplyGradientDescent"),
             _shape_checked("ApplyGradientDescent", _gd), stateful=True,
             ref_output=True))
define(OpDef("ApplyMomentum", _check("ApplyMomentum"),
             _shape_checked("ApplyMomentum", _momentum), stateful=True,
             ref_output=True))
define(OpDef("ApplyAdagrad", _check("ApplyAdagrad"), _shape_checked("ApplyAdagrad", _adagrad),
             stateful=True, ref_output=True))
for _t in ("ApplyRMSProp", "ApplyCenteredRMSProp"):
    define(OpDef(_t, _check(_t), _shape_checked(_t, _rmsprop), stateful=True, ref_output=True))
define(OpDef("ApplyAdam", _check("ApplyAdam"), _shape_checked("ApplyAdam", _adam),
             stateful=True,
             ref_output=True))
