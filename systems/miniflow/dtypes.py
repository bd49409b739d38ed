"""Element types, as TensorFlow's ``tf.DType`` (tensorflow/python/framework/dtypes.py).

A graph is typed before it runs: every tensor carries its dtype from the moment its op is
built, so a type error is reported at build time with the line that caused it, not deep
inside a kernel. Each dtype maps to a numpy and a torch element type (the two backends).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str
    np_dtype: np.dtype

    @property
    def is_floating(self) -> bool:
        return self.np_dtype.kind == "f"

    @property
    def is_integer(self) -> bool:
        return self.np_dtype.kind in "iu"

    @property
    def is_bool(self) -> bool:
        return self.np_dtype.kind == "b"

    @property
    def size(self) -> int:
        return self.np_dtype.itemsize

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, "bool" if self.is_bool else self.name)

    def __repr__(self) -> str:
        return f"mf.{self.name}"


float16 = DType("float16", np.dtype(np.float16))
float32 = DType("float32", np.dtype(np.float32))
float64 = DType("float64", np.dtype(np.float64))
int32 = DType("int32", np.dtype(np.int32))
int64 = DType("int64", np.dtype(np.int64))
bool_ = DType("bool", np.dtype(np.bool_))

_ALL = (float16, float32, float64, int32, int64, bool_)
_BY_NP = {d.np_dtype: d for d in _ALL}
_BY_NAME = {d.name: d for d in _ALL}
# TF's own aliases and Python types (framework/dtypes.py _STRING_TO_TF, _PYTHON_TO_TF),
# looked up before numpy: numpy reads "float" and float as float64, TF as float32
_TF_ALIASES = {"float": float32, "double": float64, "half": float16, float: float32,
               bool: bool_}


def as_dtype(x: Any) -> DType:
    """A DType from a DType, a numpy dtype or type, a torch dtype, or a name like 'float32'."""
    if isinstance(x, DType):
        return x
    if isinstance(x, str) and x in _BY_NAME:
        return _BY_NAME[x]
    if isinstance(x, (str, type)) and x in _TF_ALIASES:
        return _TF_ALIASES[x]
    if type(x).__module__ == "torch":  # a torch.dtype, without importing torch here
        return _BY_NAME[str(x).split(".")[-1]]
    try:
        return _BY_NP[np.dtype(x)]
    except (TypeError, KeyError):
        raise TypeError(f"cannot convert {x!r} to a miniflow dtype; supported: "
                        f"{', '.join(_BY_NAME)}") from None

