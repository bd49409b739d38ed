"""Static shapes with unknown dimensions, as ``tf.TensorShape``.

A shape is a tuple whose entries are ints or ``None`` (unknown until the graph runs,
typically the batch dimension of a placeholder); ``None`` instead of a tuple means even
the rank is unknown. Shape inference runs when each op is built
(tensorflow/core/framework/shape_inference.cc does the same in C++), so most shape
errors are caught before anything executes.
"""

from __future__ import annotations

from collections.abc import Sequence

Shape = tuple[int | None, ...] | None


class TensorShape(tuple):
    """What ``get_shape()`` returns: the shape tuple with ``tf.TensorShape``'s
    ``as_list()``, ``ndims`` and ``is_fully_defined()``, for TF1 code such as
    ``x.get_shape().as_list()``. ``TensorShape(None)`` has an unknown rank, and its
    ``as_list()`` raises ValueError, as TF's does. (``Tensor.shape`` stays the plain
    tuple, or None, that shape inference works with.)"""

    def __new__(cls, dims: Shape) -> TensorShape:
        self = super().__new__(cls, () if dims is None else dims)
        self.unknown_rank = dims is None
        return self

    @property
    def ndims(self) -> int | None:
        return None if self.unknown_rank else tuple.__len__(self)

    def as_list(self) -> list[int | None]:
        if self.unknown_rank:
            raise ValueError("as_list() is not defined on a shape of unknown rank")
        return list(tuple.__iter__(self))

    def is_fully_defined(self) -> bool:
        return not self.unknown_rank and None not in tuple(tuple.__iter__(self))

    def __eq__(self, other) -> bool:  # TF compares with a list too: shape == [2, 3]
        if self.unknown_rank or getattr(other, "unknown_rank", False):
            return False  # TF: an unknown shape equals nothing, not even itself
        return isinstance(other, (tuple, list)) and tuple(self) == tuple(other)

    def __ne__(self, other) -> bool:
        return not self == other

    __hash__ = tuple.__hash__

    # an unknown rank is not the scalar shape: its length and its dimensions raise, as
    # TF's do (len() of it was 0, so TF1's `len(x.get_shape()) == 0` read a scalar)
    def __len__(self) -> int:
        if self.unknown_rank:
            raise ValueError("Cannot take the length of shape with unknown rank.")
        return tuple.__len__(self)

    def __iter__(self):
        if self.unknown_rank:
            raise ValueError("Cannot iterate over a shape with unknown rank.")
        return tuple.__iter__(self)

    def __bool__(self) -> bool:  # TF's: a shape of unknown rank is False, any other True
        return not self.unknown_rank

    def __repr__(self) -> str:
        return "<unknown>" if self.unknown_rank else tuple.__repr__(self)

    __str__ = __repr__

    def __getitem__(self, key):  # a slice is a shape too: x.get_shape()[1:].as_list()
        if self.unknown_rank:  # of an unknown rank: unknown too (a dimension is None)
            return TensorShape(None) if isinstance(key, slice) else None
        got = tuple.__getitem__(self, key)
        return TensorShape(got) if isinstance(key, slice) else got


def as_shape(s: Sequence[int | None] | None) -> Shape:
    if s is None or getattr(s, "unknown_rank", False):  # get_shape() of an unknown rank
        return None
    return tuple(None if d is None or d == -1 else int(d) for d in s)


def is_fully_defined(s: Shape) -> bool:
    return s is not None and all(d is not None for d in s)


def num_elements(s: Shape) -> int | None:
    if not is_fully_defined(s):
        return None
    n = 1
    for d in s:
        n *= d
    return n


def compatible(a: Shape, b: Shape) -> bool:
    """Could a value of static shape ``b`` have shape ``a``? (None matches anything.)"""
    if a is None or b is None:
        return True
    return len(a) == len(b) and all(x is None or y is None or x == y
                                      for x, y in zip(a, b, strict=True))


def merge(a: Shape, b: Shape) -> Shape:
    """What two compatible static shapes of one value say together (TF's
    ``TensorShape.merge_with``): each dimension known in either is known."""
    if a is None or b is None:
        return b if a is None else a
    return tuple(x if x is not None else y for x, y in zip(a, b, strict=True))


def broadcast(a: Shape, b: Shape) -> Shape | str:
    """Numpy broadcasting of two static shapes; returns an error string if impossible."""
    if a is None or b is None:
        return None
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == 1:
            out.append(y)
        elif y == 1:
            out.append(x)
        elif x is None or y is None:
            out.append(x if y is None else y)
        elif x == y:
            out.append(x)
        else:
            return f"dimension {-i} is {x} vs {y}"
    return tuple(reversed(out))


def fmt(s: Shape) -> str:
    if s is None:
        return "<unknown>"
    dims = ", ".join("?" if d is None else str(d) for d in s)
    return f"({dims}{',' if len(s) == 1 else ''})"
