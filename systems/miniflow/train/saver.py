"""Checkpoints: save and restore every variable's value (tf.train.Saver).

TensorFlow's V2 checkpoint is an index file plus data shards, written to temporary names
and renamed into place so that a crash never leaves a half-written checkpoint. Ours is one
``.npz`` file with a JSON manifest (names, shapes, dtypes, a SHA-256 of each array),
written to a temporary file in the same directory and renamed atomically. ``restore``
verifies the manifest and the checksums before it touches the session, and reports
*every* name or shape that does not match, not just the first.

Periodic checkpoints are the paper's fault tolerance (Abadi et al. 2016, section 4.3: a
client saves every N steps and, after a failure, restores the latest). As TF's Saver,
``save(..., global_step=n)`` writes ``<path>-<n>``, a ``checkpoint`` state file in the
directory names the latest (``latest_checkpoint(dir)`` reads it), and each Saver keeps
only the newest ``max_to_keep`` of the checkpoints *it* wrote (another Saver's, or an
earlier run's, are never its to delete). The state file is JSON here, not a text proto;
a ``checkpoint`` in the way that is not one (a directory, a file of yours) is left alone.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from common.procs import remove_orphans

from ..errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from ..ops.state_ops import Variable, global_variables
from .optimizer import flatten_var_list


class DataLossError(NotFoundError):
    """The checkpoint file is damaged (TF's errors.DataLossError)."""


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


STATE = "checkpoint"  # TF's name for the state file
MANIFEST = "__manifest__"  # the entry that lists the others


def _write_npz(f, entries: dict[str, np.ndarray]) -> None:
    """An ``.npz`` (a zip of ``.npy`` files) of ``entries``, as ``np.savez`` writes one;
    not through ``np.savez(**entries)``, whose keyword arguments would take a variable
    named ``allow_pickle`` as numpy's option (and leave it out) or ``file`` as the file."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for key, a in entries.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asanyarray(a), allow_pickle=False)


def _read_state(directory: Path) -> dict:
    """The state file's JSON, or {} if there is none, or what is there is not one."""
    try:
        state = json.loads((directory / STATE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and isinstance(state.get("latest"), str) else {}


def latest_checkpoint(checkpoint_dir: str) -> str | None:
    """The path of the newest checkpoint a Saver recorded in ``checkpoint_dir``, or None
    (``tf.train.latest_checkpoint``)."""
    name = _read_state(Path(checkpoint_dir)).get("latest")
    if not isinstance(name, str) or not (Path(checkpoint_dir) / name).exists():
        return None
    return str(Path(checkpoint_dir) / name)


class Saver:
    def __init__(self, var_list=None, *, max_to_keep: int | None = 5):
        # TF1's second positional is ``reshape``: the rest are keywords here
        vs = var_list if var_list is not None else global_variables()
        if hasattr(vs, "op"):  # one variable or tensor: TF1 wants a list or a dict
            raise TypeError(f"Variables to save should be passed in a dict or a list, got "
                            f"{vs}")
        if isinstance(vs, dict):
            self._vars = dict(vs)
        else:
            vs = flatten_var_list(vs)  # nested lists too, as TF1's op_list_to_dict
            self._vars = {v.op.name: v for v in vs}
            if len(self._vars) < len(vs):  # w twice, or w and w:0: TF1 refuses it too
                seen = [v.op.name for v in vs]
                twice = next(n for n in seen if seen.count(n) > 1)
                raise ValueError(f"At least two variables have the same name: {twice}")
        if not self._vars:  # as TF's Saver: a checkpoint of nothing is a mistake
            raise ValueError("No variables to save")
        for v in self._vars.values():  # a variable, or its own tensor (w:0), as in TF1;
            # any other tensor has no value to restore into
            if not isinstance(v, Variable) and getattr(getattr(v, "op", None), "type",
                                                       None) != "VariableV2":
                raise TypeError(f"Variable to save is not a Variable: {v}")
        if MANIFEST in self._vars:
            raise ValueError(f"Saver: {MANIFEST!r} names the checkpoint's manifest; give "
                             f"that variable another name (or another key in var_list)")
        if max_to_keep is not None and max_to_keep < 0:
            raise ValueError(f"max_to_keep must be >= 0 or None (0, None: keep all), got "
                             f"{max_to_keep}")
        self.max_to_keep = max_to_keep
        self._last: list[Path] = []  # what this Saver wrote, oldest first (TF's too)

    def _check_graph(self, sess) -> None:
        """TF's save and restore ops live in the Saver's graph, so another graph's session
        cannot run them; here the values go by name, so say it rather than mix graphs."""
        for key, var in self._vars.items():
            if var.graph is not sess.graph:
                raise ValueError(f"Saver: variable {key} is not in the session's graph")

    def save(self, sess, save_path: str, global_step=None, *, write_meta_graph: bool = True,
             ) -> str:  # (TF1's meta graph: none here, a graph is the Python that builds it;
        # its fourth positional is latest_filename: keywords after the step here)
        """Write the checkpoint, recorded as the directory's latest; with ``global_step``
        (a number, or a variable or tensor the session evaluates, as TF takes), to
        ``<save_path>-<step>``. This Saver's oldest beyond ``max_to_keep`` are deleted.
        Returns the file written (``model-1000.npz``, where TF returns the prefix
        ``model-1000`` of its index and data files): a path that opens."""
        self._check_graph(sess)
        if global_step is not None:
            if hasattr(global_step, "op"):  # a step variable or tensor: its value now
                global_step = sess.run(global_step)
            save_path = f"{save_path}-{int(global_step)}"
        path = Path(save_path if str(save_path).endswith(".npz") else f"{save_path}.npz")
        values = sess.variable_values()
        arrays, manifest = {}, {}
        for key, var in self._vars.items():
            if var.op.name not in values:
                # TF's SaveV2 reads it: "Attempting to use uninitialized value"
                raise FailedPreconditionError(f"cannot save {key}: the variable is not "
                                              f"initialised")
            a = values[var.op.name]
            arrays[key] = a
            manifest[key] = {"shape": list(a.shape), "dtype": a.dtype.str, "sha256": _digest(a)}
        buf = io.BytesIO()
        _write_npz(buf, {MANIFEST: np.frombuffer(json.dumps(manifest).encode(), np.uint8),
                         **arrays})
        path.parent.mkdir(parents=True, exist_ok=True)
        for ours in (".*.npz.tmp-*", f".{STATE}.tmp-*"):  # of saves killed mid-write
            remove_orphans(path.parent.glob(ours))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
        fcntl.flock(fd, fcntl.LOCK_EX)  # ours while we write: remove_orphans leaves it
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getvalue())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:  # a full disk, a directory in the way: no model-sized
            Path(tmp).unlink(missing_ok=True)  # hidden temporary left behind
            raise
        self._record_latest(path)
        return str(path)

    def _record_latest(self, path: Path) -> None:
        """Name ``path`` the latest in the directory's state file (written atomically: a
        crash leaves the previous latest, whose file still exists), then delete this
        Saver's checkpoints beyond ``max_to_keep``."""
        self._last = [p for p in self._last if p != path] + [path]
        drop = self._last[:-self.max_to_keep] if self.max_to_keep else []
        self._last = self._last[len(drop):]
        state = path.parent / STATE
        try:
            # an empty one is ours: a power loss between a rename and the disk's write
            if state.exists() and state.stat().st_size and not _read_state(path.parent):
                warnings.warn(f"{state} is not a checkpoint state file; left as it is, so "
                              f"latest_checkpoint({str(path.parent)!r}) will not name "
                              f"{path.name}", stacklevel=3)
                return
            # a temporary of its own per write: one per process was shared by two Savers
            # saving from two threads, which interleaved their writes into one file that
            # was no longer JSON (then never replaced, so latest_checkpoint said None)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{STATE}.tmp-")
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps({"latest": path.name,
                                        "all": [p.name for p in self._last
                                                if p.parent == path.parent]}))
                    f.flush()  # on disk before the rename, as the checkpoint is
                    os.fsync(f.fileno())
                os.replace(tmp, state)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        finally:  # only checkpoints this Saver wrote, already out of self._last
            for old in drop:
                old.unlink(missing_ok=True)

    def restore(self, sess, save_path: str) -> None:
        if save_path is None:  # latest_checkpoint of a directory with none, as TF says
            raise ValueError("Can't load save_path when it is None (no checkpoint)")
        self._check_graph(sess)
        path = Path(save_path if str(save_path).endswith(".npz") else f"{save_path}.npz")
        if not path.exists():
            # TF's restore checks checkpoint_exists first (a ValueError, which a TF1
            # program catches to start from scratch)
            raise ValueError(f"The passed save_path is not a valid checkpoint: no "
                             f"checkpoint at {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                # by the zip entry's own name (key + ".npy"): np.load's short names drop
                # that suffix, so the variables "emb" and "emb.npy" would read one entry
                manifest = json.loads(bytes(data[f"{MANIFEST}.npy"]).decode())
                arrays = {k: data[f"{k}.npy"] for k in data.files if k != MANIFEST}
        except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError) as e:
            raise DataLossError(f"checkpoint {path} is unreadable or corrupted: {e}") from None
        for k, a in arrays.items():
            if k not in manifest or manifest[k]["sha256"] != _digest(a):
                raise DataLossError(f"checkpoint {path}: entry {k!r} fails its checksum")
        problems, missing = [], False
        for key, var in self._vars.items():
            if key not in arrays:
                missing = True
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
        if problems:  # TF: a missing name is NotFound, a shape or dtype InvalidArgument
            error = NotFoundError if missing else InvalidArgumentError
            raise error(f"Restoring from {path} failed:\n  " + "\n  ".join(problems))
        for key, var in self._vars.items():
            sess._set_variable(var, arrays[key])
