"""Errors that teach: each names the op, what it expected, what it got, and the user's
file:line where that op was built (``tensorflow/python/framework/errors_impl.py`` raises
``OpError`` subclasses carrying the node and its creation traceback in the same spirit).
"""

from __future__ import annotations

from typing import Any


def where(op: Any) -> str:
    site = getattr(op, "created_at", None)
    return f" (op '{op.name}' of type {op.type}, created at {site})" if site else ""


class OpError(Exception):
    """An error raised while running the graph, attributed to one op."""

    def __init__(self, message: str, op: Any = None):
        self.op = op
        self.message = message
        super().__init__(message + (where(op) if op is not None else ""))


class InvalidArgumentError(OpError):
    """A kernel got inputs it cannot handle (bad values, NaN under check_numerics...)."""


class FailedPreconditionError(OpError):
    """The graph is fine but the state is not (e.g. reading an uninitialised Variable)."""


class NotFoundError(OpError):
    """A name that does not exist (a tensor, a device, a checkpoint entry)."""


class GraphBuildError(ValueError):
    """A shape or dtype error found while building the graph, before anything runs."""


class GraphBuildTypeError(GraphBuildError, TypeError):
    """A dtype an op does not accept (``exp`` of an int32), or a Python number that does
    not fit the tensor it meets (``x_int32 * 2.5``): TF raises TypeError while building."""


class MemberError(Exception):
    """Raised by a fused kernel when one of the ops fused into it fails: carries that op
    and its input values, so the executor reports the op the user wrote, at its line,
    rather than the fused chain's last op (``error`` is the original exception)."""

    def __init__(self, op: Any, error: BaseException, inputs: list):
        super().__init__(str(error))
        self.op, self.error, self.inputs = op, error, inputs
