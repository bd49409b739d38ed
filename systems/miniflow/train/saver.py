"""Checkpoints: save and restore every variable's value (tf.train.Saver).

TensorFlow's V2 checkpoint is an index file plus data shards, written to temporary names
and renamed into place so that a crash never leaves a half-written checkpoint. Ours is one
``.npz`` file with a JSON manifest (names, shapes, dtypes, a SHA-256 of each array),
written to a temporary file in the same directory and renamed atomically. ``restore``
verifies the manifest and the checksums before it touches the session, and reports
*every* name or shape that does not match, not just the first.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import NotFoundError
from ..ops.state_ops import global_variables


class DataLossError(NotFoundError):
    """The checkpoint file is damaged (TF's errors.DataLossError)."""


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


class Saver:
    def __init__(self, var_list=None):
        vs = var_list if var_list is not None else global_variables()
        self._vars = dict(vs) if isinstance(vs, dict) else {v.op.name: v for v in vs}

    def _check_graph(self, sess) -> None:
        """TF's save and restore ops live in the Saver's graph, so another graph's session
        cannot run them; here the values go by name, so say it rather than mix graphs."""
        for key, var in self._vars.items():
            if var.graph is not sess.graph:
                raise ValueError(f"Saver: variable {key} is not in the session's graph")

    def save(self, sess, save_path: str) -> str:
        self._check_graph(sess)
        path = Path(save_path if str(save_path).endswith(".npz") else f"{save_path}.npz")
        values = sess.variable_values()
        arrays, manifest = {}, {}
        for key, var in self._vars.items():
            if var.op.name not in values:
                raise NotFoundError(f"cannot save {key}: the variable is not initialised")
            a = values[var.op.name]
            arrays[key] = a
            manifest[key] = {"shape": list(a.shape), "dtype": a.dtype.str, "sha256": _digest(a)}
        buf = io.BytesIO()
        np.savez(buf, __manifest__=np.frombuffer(json.dumps(manifest).encode(), np.uint8),
                 **arrays)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return str(path)

    def restore(self, sess, save_path: str) -> None:
        self._check_graph(sess)
        path = Path(save_path if str(save_path).endswith(".npz") else f"{save_path}.npz")
        if not path.exists():
            raise NotFoundError(f"no checkpoint at {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                manifest = json.loads(bytes(data["__manifest__"]).decode())
                arrays = {k: data[k] for k in data.files if k != "__manifest__"}
        except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError) as e:
            raise DataLossError(f"checkpoint {path} is unreadable or corrupted: {e}") from None
        for k, a in arrays.items():
            if k not in manifest or manifest[k]["sha256"] != _digest(a):
                raise DataLossError(f"checkpoint {path}: entry {k!r} fails its checksum")
        problems = []
        for key, var in self._vars.items():
            if key not in arrays:
                problems.append(f"{key}: not found in the checkpoint")
            elif tuple(arrays[key].shape) != tuple(var.shape):
                problems.append(f"{key}: checkpoint has shape {tuple(arrays[key].shape)}, "
                                f"the graph's variable has {tuple(var.shape)}")
            elif arrays[key].dtype != var.dtype.np_dtype:
                problems.append(f"{key}: checkpoint has dtype {arrays[key].dtype}, the "
                                f"variable is {var.dtype.name}")
        # Entries no variable of ours asks for (an optimizer's slots, when an inference
        # graph restores a training checkpoint) are ignored, as TF's Saver restores only
        # its own var_list (tensorflow/python/training/saver.py).
        if problems:
            raise NotFoundError(f"Restoring from {path} failed:\n  " + "\n  ".join(problems))
        for key, var in self._vars.items():
            sess._set_variable(var, arrays[key])
