"""Arithmetic, comparisons and matmul (tensorflow/python/ops/math_ops.py; its reductions
are in :mod:`.reduction_ops`).

Elementwise binary ops broadcast like numpy and require equal dtypes (TensorFlow never
promotes silently; a Python scalar takes the other operand's dtype). Their kernels are the
backend's own functions, so running ``Add`` on numpy costs exactly one ``np.add`` call.
"""

from __future__ import annotations

from typing import Any

from .. import shapes
from ..dtypes import DType, as_dtype, bool_, float64
from ..errors import InvalidArgumentError
from ..graph import Tensor
from ..op_def import (
    OpDef,
    constant,
    convert_to_tensor,
    define,
    dtype_error,
    elementwise_shape,
    make_op,
    same_dtype,
    shape_error,
)

# -- elementwise -----------------------------------------------------------------------


def _binary_shape(op_type: str, out_dtype: DType | None = None):
    def fn(ins, attrs):
        dt = same_dtype(op_type, *ins)
        return [(out_dtype or dt, elementwise_shape(op_type, *ins))]
    return fn


def _unary_shape(ins, attrs):
    return [(ins[0].dtype, ins[0].shape)]


def _float_only(op_type: str, shape_fn):
    """Exp, Log, Tanh, RealDiv...: TF registers these for floating-point types only, so an
    int32 input is a TypeError when the op is built (numpy would quietly return floats,
    and the tensor's static dtype would then disagree with its value)."""
    def fn(ins, attrs):
        for t in ins:
            if not t.dtype.is_floating:
                raise dtype_error(op_type, f"needs floating-point inputs, got {t.dtype.name} "
                                  f"(use mf.cast)", *ins)
        return shape_fn(ins, attrs)
    return fn


def _numeric_only(op_type: str, shape_fn):
    """Add, Mul, Sum, Mean...: TF registers these for number types, not bool, so a bool
    input is a TypeError at build time. numpy would compute something (``True + True``
    is an OR; the mean of bools, the classic ``mean(equal(pred, y))``, keeps dtype bool
    and reads 0.25 or 0 for 3 of 4 correct): cast first."""
    def fn(ins, attrs):
        for t in ins[:1] if op_type in REDUCTIONS else ins:
            if t.dtype == bool_:
                raise dtype_error(op_type, f"needs numeric inputs, got {t.dtype.name} "
                                  f"(use mf.cast, e.g. to float32 for an accuracy)", *ins)
        return shape_fn(ins, attrs)
    return fn


REDUCTIONS = {"Sum", "Mean", "Max"}


def _bool_only(op_type: str, shape_fn):
    """LogicalAnd, LogicalOr, LogicalNot: TF's op defs take ``x: bool`` only
    (tensorflow/core/ops/math_ops.cc), so a float input is a TypeError at build time;
    numpy would quietly treat any nonzero as True (and LogicalNot's static dtype would
    then be float while its value is bool)."""
    def fn(ins, attrs):
        for t in ins:
            if t.dtype != bool_:
                raise dtype_error(op_type, f"needs bool inputs, got {t.dtype.name} "
                                  f"(compare, or use mf.cast)", *ins)
        return shape_fn(ins, attrs)
    return fn


BINARY = {"Add": "add", "Sub": "subtract", "Mul": "multiply", "RealDiv": "divide",
          "FloorDiv": "floor_divide", "Pow": "power", "Maximum": "maximum", "Minimum": "minimum"}
COMPARE = {"Equal": "equal", "NotEqual": "not_equal", "Less": "less", "Greater": "greater",
           "LessEqual": "less_equal", "GreaterEqual": "greater_equal",
           "LogicalAnd": "logical_and", "LogicalOr": "logical_or"}
UNARY = {"Neg": ("negative", 1), "Exp": ("exp", 4), "Log": ("log", 4), "Tanh": ("tanh", 6),
         "Sigmoid": ("sigmoid", 6), "Relu": ("relu", 1), "Sqrt": ("sqrt", 2),
         "Square": ("square", 1), "Abs": ("abs", 1), "Sign": ("sign", 1),
         "LogicalNot": ("logical_not", 1)}


def _backend_fn(method: str):
    return lambda attrs, be, res: getattr(be, method)


def _integer_checked(method: str, bad: str, message: str):
    """A kernel maker for ``method`` that refuses, for integer inputs, a ``y`` the backend's
    ``bad(y)`` flags, with TF's message; a floating-point op (``T`` known when it was
    built) keeps the bare backend function."""
    def make(attrs, be, res):
        fn = getattr(be, method)
        t = attrs.get("T")
        if t is not None and t.is_floating:
            return fn

        def kernel(x, y):
            if getattr(be, bad)(y):
                raise InvalidArgumentError(f"{message} (x has shape {tuple(x.shape)}, "
                                           f"y has shape {tuple(y.shape)})")
            return fn(x, y)
        return kernel
    return make


KERNELS = {
    # TF's safe_div_or_mod_op (tensorflow/core/kernels/cwise_ops.h; the error is raised
    # by BinaryOpShared::SetComputeError, cwise_ops_common.cc); numpy would give 0 with a
    # RuntimeWarning, torch a bare ZeroDivisionError; floats divide to +-inf/nan as in TF
    "FloorDiv": _integer_checked("floor_divide", "has_integer_zero",
                                 "FloorDiv: Integer division by zero"),
    # TF's safe_pow (tensorflow/core/kernels/cwise_ops.h); torch would answer 1 // x**n,
    # numpy raise its own ValueError
    "Pow": _integer_checked("power", "has_negative_integer",
                            "Pow: Integers to negative integer powers are not allowed"),
}
FLOAT_ONLY = {"RealDiv", "Exp", "Log", "Tanh", "Sigmoid", "Sqrt"}
BOOL_ONLY = {"LogicalAnd", "LogicalOr", "LogicalNot"}
for _t, _m in BINARY.items():
    _fn = _binary_shape(_t)
    define(OpDef(_t, _float_only(_t, _fn) if _t in FLOAT_ONLY else _numeric_only(_t, _fn),
                 KERNELS.get(_t) or _backend_fn(_m), elementwise=True))
for _t, _m in COMPARE.items():
    _fn = _binary_shape(_t, bool_)
    # Less, Greater...: TF's T is realnumbertypes (no bool); Equal and NotEqual take any
    _fn = (_bool_only(_t, _fn) if _t in BOOL_ONLY else
           _fn if _t in ("Equal", "NotEqual") else _numeric_only(_t, _fn))
    define(OpDef(_t, _fn, _backend_fn(_m), elementwise=True))
for _t, (_m, _f) in UNARY.items():
    # Neg, Relu, Square, Abs, Sign: number types only in TF, as the binary ops (numpy's
    # square of a bool is int8, its relu int64, under a tensor that says bool)
    _fn = (_float_only(_t, _unary_shape) if _t in FLOAT_ONLY else
           _unary_shape if _t in BOOL_ONLY else _numeric_only(_t, _unary_shape))
    define(OpDef(_t, _bool_only(_t, _fn) if _t in BOOL_ONLY else _fn,
                 _backend_fn(_m), elementwise=True, flops_per_element=_f))

define(OpDef("Cast", lambda ins, a: [(a["DstT"], ins[0].shape)],
             lambda a, be, res: lambda x: be.cast(x, a["DstT"]), elementwise=True))


def _addn_shape(ins, attrs):
    dt = same_dtype("AddN", *ins)
    out = ins[0].shape
    for t in ins[1:]:
        if not shapes.compatible(out, t.shape):
            raise shape_error("AddN", "all inputs must have the same shape", *ins)
        out = shapes.merge(out, t.shape)
    return [(dt, out)]


def _addn_kernel(attrs, be, res):
    def addn(*xs):
        # [None, 4] and [1, 4] pass the shape function and would broadcast here, each
        # input's gradient then of the wrong shape: refused, as TF's aggregate_ops.cc does
        first = tuple(xs[0].shape)
        for x in xs[1:]:
            if tuple(x.shape) != first:
                raise InvalidArgumentError(
                    f"AddN: all inputs must have the same shape, got "
                    f"{', '.join(str(tuple(y.shape)) for y in xs)}")
        acc = be.add(xs[0], xs[1]) if len(xs) > 1 else xs[0]
        for x in xs[2:]:
            acc = be.add(acc, x)
        return acc
    return addn


define(OpDef("AddN", _numeric_only("AddN", _addn_shape), _addn_kernel))  # bools: an OR
def _select_shape(ins, attrs):
    # TF's SelectV2 takes ``condition: bool`` (tensorflow/core/ops/math_ops.cc): a float or
    # int condition is a TypeError at build time, not numpy's "nonzero is True"
    if ins[0].dtype != bool_:
        raise dtype_error("SelectV2", f"condition must be bool, got {ins[0].dtype.name} "
                          f"(compare, or use mf.cast)", *ins)
    return [(same_dtype("SelectV2", ins[1], ins[2]), elementwise_shape("SelectV2", *ins))]


define(OpDef("SelectV2", _select_shape, lambda a, be, res: be.where, elementwise=True))


def _select_v1_kernel(attrs, be, res):
    def select(c, x, y):  # TF1's Select: a vector condition picks rows of a matrix
        n = max(x.ndim, y.ndim)
        if c.ndim == 1 and n > 1:
            c = c.reshape((-1,) + (1,) * (n - 1))
        return be.where(c, x, y)
    return select


# TF1's Select, for a where() whose ranks the graph does not know: rows or elements is
# decided when it runs, as TF's kernel decides (tensorflow/core/kernels/cwise_op_select.cc)
def _select_v1_shape(ins, attrs):
    if ins[0].dtype != bool_:
        raise dtype_error("Select", f"condition must be bool, got {ins[0].dtype.name}", *ins)
    c = ins[0]
    # the kernel broadcasts the condition too unless it is a vector picking rows
    sides = ins[1:] if c.shape is not None and len(c.shape) == 1 else ins
    shape = elementwise_shape("Select", *sides) if c.shape is not None else None
    return [(same_dtype("Select", ins[1], ins[2]), shape)]


define(OpDef("Select", _select_v1_shape, _select_v1_kernel))


def _is_value(v: Any) -> bool:
    return not isinstance(v, Tensor) and not hasattr(v, "_as_tensor")


def _operands(op_type: str, x: Any, y: Any) -> tuple[Tensor, Tensor]:
    """A Python number takes the dtype of the tensor it meets (math_ops binary_op_wrapper
    converts it with ``dtype=x.dtype``), and must keep its value: ``x_int32 * 2.5`` is a
    TypeError, as in TF, not a silent ``x * 2``."""
    x = convert_to_tensor(x) if _is_value(x) and _is_value(y) else x
    if _is_value(y) or _is_value(x):
        t, v = (x, y) if _is_value(y) else (y, x)
        t = convert_to_tensor(t)
        try:
            c = constant(v, dtype=t.dtype)
        except TypeError as e:
            raise dtype_error(op_type, f"cannot combine {v!r} with {t.name} "
                              f"({t.dtype.name}): {e}", t) from None
        return (t, c) if _is_value(y) else (c, t)
    return convert_to_tensor(x), convert_to_tensor(y)


def _binary(op_type: str, x: Any, y: Any, name: str | None) -> Tensor:
    return make_op(op_type, list(_operands(op_type, x, y)), name=name).outputs[0]


def _unary(op_type: str, x: Any, name: str | None) -> Tensor:
    return make_op(op_type, [x], name=name).outputs[0]


def add(x, y, name=None): return _binary("Add", x, y, name)  # noqa: E704
def subtract(x, y, name=None): return _binary("Sub", x, y, name)  # noqa: E704
def multiply(x, y, name=None): return _binary("Mul", x, y, name)  # noqa: E704
def pow(x, y, name=None): return _binary("Pow", x, y, name)  # noqa: E704,A001
def maximum(x, y, name=None): return _binary("Maximum", x, y, name)  # noqa: E704
def minimum(x, y, name=None): return _binary("Minimum", x, y, name)  # noqa: E704
def equal(x, y, name=None): return _binary("Equal", x, y, name)  # noqa: E704
def not_equal(x, y, name=None): return _binary("NotEqual", x, y, name)  # noqa: E704
def less(x, y, name=None): return _binary("Less", x, y, name)  # noqa: E704
def greater(x, y, name=None): return _binary("Greater", x, y, name)  # noqa: E704
def less_equal(x, y, name=None): return _binary("LessEqual", x, y, name)  # noqa: E704
def greater_equal(x, y, name=None): return _binary("GreaterEqual", x, y, name)  # noqa: E704
def logical_and(x, y, name=None): return _binary("LogicalAnd", x, y, name)  # noqa: E704
def logical_or(x, y, name=None): return _binary("LogicalOr", x, y, name)  # noqa: E704
def negative(x, name=None): return _unary("Neg", x, name)  # noqa: E704
def exp(x, name=None): return _unary("Exp", x, name)  # noqa: E704
def log(x, name=None): return _unary("Log", x, name)  # noqa: E704
def tanh(x, name=None): return _unary("Tanh", x, name)  # noqa: E704
def sigmoid(x, name=None): return _unary("Sigmoid", x, name)  # noqa: E704
def relu(x, name=None): return _unary("Relu", x, name)  # noqa: E704
def sqrt(x, name=None): return _unary("Sqrt", x, name)  # noqa: E704
def square(x, name=None): return _unary("Square", x, name)  # noqa: E704
def abs(x, name=None): return _unary("Abs", x, name)  # noqa: E704,A001
def logical_not(x, name=None): return _unary("LogicalNot", x, name)  # noqa: E704
def sign(x, name=None): return _unary("Sign", x, name)  # noqa: E704


def divide(x, y, name=None) -> Tensor:
    """``x / y``, TF's truediv (math_ops.py ``_truediv_python3``): integers are cast to
    float64 first (``_TRUEDIV_TABLE``), so ``3 / 2`` is 1.5 with static dtype float64."""
    x, y = _operands("RealDiv", x, y)
    if x.dtype.is_integer and x.dtype == y.dtype:
        x, y = cast(x, float64), cast(y, float64)
    return make_op("RealDiv", [x, y], name=name or "truediv").outputs[0]  # TF's name


def floordiv(x, y, name=None) -> Tensor:
    """``x // y``, rounded toward negative infinity (TF's FloorDiv: for floats
    ``floor(x / y)``, which is not always Python's ``//``: ``1.0 // 0.1`` is 10 here, as in
    TF); an integer division by zero is an InvalidArgumentError when it runs, as in TF."""
    x, y = _operands("FloorDiv", x, y)
    return make_op("FloorDiv", [x, y], {"T": x.dtype}, name or "floordiv").outputs[0]


def div(x, y, name=None) -> Tensor:
    """TF1's ``tf.div``: Python 2's ``/`` (math_ops.py ``_div_python2``): RealDiv for
    floating-point inputs, FloorDiv for integers. Prefer ``divide`` (``/``)."""
    x, y = _operands("RealDiv", x, y)
    if x.dtype.is_integer:
        return make_op("FloorDiv", [x, y], {"T": x.dtype}, name or "div").outputs[0]
    return make_op("RealDiv", [x, y], name=name or "div").outputs[0]  # TF's name


# ReluGrad(g, features) = g where features > 0 else 0 (nn_grad.py's _ReluGrad). A real
# op, not a composition, so that its own gradient (_ReluGradGrad) is one more ReluGrad.
define(OpDef("ReluGrad", _binary_shape("ReluGrad"), _backend_fn("relu_grad"),
             elementwise=True))


def relu_grad(gradients, features, name=None):
    return make_op("ReluGrad", [gradients, features], name=name).outputs[0]


# SqrtGrad(y, dy) = 0.5 * dy / y, and 0 where dy is 0 (cwise_ops_gradients.h's
# scalar_sqrt_gradient_op): the branch `where` masks out of where(d > 0, sqrt(d), 0) sends
# back 0, not 0 * 0.5 / 0 = NaN. A real op, as in TF, with its own gradient.
define(OpDef("SqrtGrad", _binary_shape("SqrtGrad"), _backend_fn("sqrt_grad"),
             elementwise=True))


def sqrt_grad(y, dy, name=None):
    return make_op("SqrtGrad", [y, dy], name=name).outputs[0]


def cast(x, dtype, name=None) -> Tensor:
    x = convert_to_tensor(x)
    dtype = as_dtype(dtype)
    if x.dtype == dtype:
        return x
    return make_op("Cast", [x], {"DstT": dtype}, name).outputs[0]


def add_n(inputs, name=None) -> Tensor:
    inputs = list(inputs)
    if not inputs:  # TF: "inputs must be a list of at least one Tensor"
        raise ValueError("AddN: inputs is an empty list; add_n needs at least one tensor")
    if len(inputs) == 1:
        return convert_to_tensor(inputs[0])
    return make_op("AddN", inputs, name=name).outputs[0]


# -- matmul ----------------------------------------------------------------------------

def _matmul_shape(ins, attrs):
    a, b = ins
    dt = same_dtype("MatMul", a, b)
    if any(t.shape is not None and len(t.shape) < 2 for t in ins):  # even if one is unknown
        raise shape_error("MatMul", "inputs must be at least rank 2", a, b)
    if a.shape is None or b.shape is None:
        return [(dt, None)]
    m, ka = (a.shape[-1], a.shape[-2]) if attrs["transpose_a"] else a.shape[-2:]
    kb, n = (b.shape[-1], b.shape[-2]) if attrs["transpose_b"] else b.shape[-2:]
    if ka is not None and kb is not None and ka != kb:
        raise shape_error("MatMul", f"inner dimensions differ: {ka} vs {kb}", a, b)
    batch = shapes.broadcast(a.shape[:-2], b.shape[:-2])
    if isinstance(batch, str):
        raise shape_error("MatMul", f"batch dimensions cannot broadcast: {batch}", a, b)
    return [(dt, batch + (m, n))]


def _matmul_kernel(attrs, be, res):
    mm, ta, tb = be.matmul, attrs["transpose_a"], attrs["transpose_b"]
    swap = "swapaxes" if be.name == "numpy" else "transpose"  # torch's name for it

    def matmul(a, b):  # a rank unknown at build time is checked here, as TF's kernel does
        if a.ndim < 2 or b.ndim < 2:  # (numpy and torch would multiply a vector)
            raise InvalidArgumentError(f"MatMul: In[{int(a.ndim >= 2)}] is not a matrix; "
                                       f"shapes {tuple(a.shape)} and {tuple(b.shape)}")
        return mm(getattr(a, swap)(-1, -2) if ta else a, getattr(b, swap)(-1, -2) if tb else b)
    return matmul


define(OpDef("MatMul", _numeric_only("MatMul", _matmul_shape), _matmul_kernel))


def matmul(a, b, transpose_a=False, transpose_b=False, adjoint_a=False, adjoint_b=False,
           a_is_sparse=False, b_is_sparse=False, output_type=None, *, name=None) -> Tensor:
    """``a @ b`` over the last two axes; leading axes broadcast (TF's BatchMatMulV2).
    TF1's arguments: the sparsity hints are ignored, and with no complex dtypes the
    adjoint is the transpose; ``output_type`` is left out. ``name`` is a keyword (TF 2's
    ``compat.v1`` put ``grad_a`` and ``grad_b`` before it)."""
    if (transpose_a and adjoint_a) or (transpose_b and adjoint_b):
        raise ValueError("matmul: only one of transpose and adjoint can be True per operand")
    if output_type is not None:
        raise NotImplementedError("matmul: output_type is not implemented in miniflow")
    return make_op("MatMul", [a, b], {"transpose_a": bool(transpose_a or adjoint_a),
                                      "transpose_b": bool(transpose_b or adjoint_b)},
                   name).outputs[0]


# -- operator overloading (TF: ops.Tensor._override_operator) -------------------------

def _operator(fn, name):
    """``x + y`` and ``y + x``: the op is named after the Python operator (``add``,
    ``mul``, ``truediv``), where ``mf.add`` names it after its type (``Add``), as TF's
    ``math_ops._OverrideBinaryOperatorHelper`` does."""
    return (lambda self, other: fn(self, other, name=name),
            lambda self, other: fn(other, self, name=name))


Tensor.__add__, Tensor.__radd__ = _operator(add, "add")
Tensor.__sub__, Tensor.__rsub__ = _operator(subtract, "sub")
Tensor.__mul__, Tensor.__rmul__ = _operator(multiply, "mul")
Tensor.__truediv__, Tensor.__rtruediv__ = _operator(divide, "truediv")
Tensor.__floordiv__, Tensor.__rfloordiv__ = _operator(floordiv, "floordiv")
Tensor.__pow__, Tensor.__rpow__ = _operator(pow, "pow")
Tensor.__matmul__, Tensor.__rmatmul__ = _operator(matmul, "matmul")
Tensor.__neg__ = negative
Tensor.__abs__ = abs
Tensor.__lt__, Tensor.__le__ = less, less_equal
Tensor.__gt__, Tensor.__ge__ = greater, greater_equal

