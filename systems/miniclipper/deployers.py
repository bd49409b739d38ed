"""Deployers: write a model directory on local disk, then deploy it by path.

``clipper_admin/clipper_admin/deployers/python.py`` serialises a Python closure with cloudpickle
(``deployer_utils.save_python_function`` writes ``func.pkl`` to a temp dir), builds a
Docker image from that directory and deploys the image. We keep the first half exactly
and replace the image with the directory itself: the management API receives its *path*
and the supervisor copies it into the model store (:mod:`.supervisor`). The pickle never
crosses the network.

A model directory holds one cloudpickle file and ``clipper_model.json``
(``{"kind": "closure" | "sklearn" | "torch", "file", ...}``). A closure receives the
batch (a 2-D array for equal-length numeric inputs, else a list) and returns one output
per input, as in Clipper's python container; a scikit-learn estimator gets
``predict(batch)``; a torch module gets a float32 tensor reshaped to ``input_shape`` on
its ``device`` ("cpu" or "cuda"), and returns its output, or its arg-max along dim 1.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The model directory's description, written here and read by the container. It lives
# with the deployers so that importing the package does not import container.py, which
# is run as ``python -m systems.miniclipper.container`` (runpy would warn that it runs a
# module already imported, and run it twice).
MODEL_META = "clipper_model.json"


def _student_modules() -> list[Any]:
    """The loaded modules a container could not import: those from outside the repo and
    this Python's own directories (the student's ``mymodel.py``, wherever it lives).
    cloudpickle saves a function or class of an importable module by reference, by its
    module's name; one of these must travel by value, or the container fails to load it."""
    import site

    # what a container's path holds: the repo, this Python's own and site directories
    # (the user's too), and PYTHONPATH, which it inherits; not the deployer's directory
    given = {str(Path(__file__).resolve().parents[2]), sys.prefix, sys.base_prefix,
             sys.exec_prefix, sys.base_exec_prefix, site.getusersitepackages(),
             *site.getsitepackages(),
             *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))}
    roots = tuple(given | {os.path.realpath(r) for r in given})
    return [m for name, m in list(sys.modules.items())  # (the paths as loaded: fast)
            if name != "__main__" and isinstance(getattr(m, "__file__", None), str)
            and not m.__file__.startswith(roots)
            and not os.path.realpath(m.__file__).startswith(roots)]


def save_model(obj: Any, kind: str, out_dir: str | Path | None = None,
               **meta: Any) -> str:
    """cloudpickle ``obj`` into a new model directory; return its absolute path."""
    import cloudpickle

    d = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(suffix="-clipper-model"))
    d.mkdir(parents=True, exist_ok=True)
    mine = _student_modules()
    for m in mine:
        cloudpickle.register_pickle_by_value(m)
    try:
        with open(d / "model.pkl", "wb") as f:
            cloudpickle.dump(obj, f)
    finally:
        for m in mine:
            cloudpickle.unregister_pickle_by_value(m)
    (d / MODEL_META).write_text(json.dumps({"kind": kind, "file": "model.pkl", **meta}))
    return str(d.resolve())


def save_python_closure(func: Callable[[Any], Any], out_dir: str | Path | None = None) -> str:
    return save_model(func, "closure", out_dir)


def save_sklearn_model(model: Any, out_dir: str | Path | None = None) -> str:
    return save_model(model, "sklearn", out_dir)


def save_torch_model(module: Any, input_shape: tuple[int, ...] | None = None,
                     device: str = "cpu", output: str = "raw",
                     out_dir: str | Path | None = None) -> str:
    if output not in ("raw", "argmax"):
        raise ValueError(f"output must be 'raw' or 'argmax', got {output!r}")
    import copy

    # a CPU copy: the caller's module stays where it was (it may be on a GPU)
    return save_model(copy.deepcopy(module).cpu(), "torch", out_dir,
                      input_shape=list(input_shape) if input_shape else None,
                      device=device, output=output)


# clipper_admin's deployers also take the Docker side of a deploy; with local processes
# there is no image to build or push, and packages are those of this Python
DOCKER_ONLY = {"base_image": "default", "registry": None, "pkgs_to_install": None}


def _deploy_saved(conn: Any, name: str, version: str | int, input_type: str, path: str,
                  **deploy: Any) -> None:
    """Deploy a freshly saved model directory, then delete it: the manager copied it into
    its own store (``ReplicaSupervisor.install``), so the temporary copy is garbage.
    Clipper's Docker arguments are taken, and one that asks for something (a registry,
    packages) is a warning that it does nothing here, not a TypeError."""
    for key, default in DOCKER_ONLY.items():
        if deploy.pop(key, default) != default:
            warnings.warn(f"{key} is for Clipper's Docker images; miniclipper runs the model "
                          f"in a local process with this Python's packages, so it has no "
                          f"effect", stacklevel=3)
    try:
        conn.deploy_model(name, version, input_type, path, **deploy)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def deploy_python_closure(conn: Any, name: str, version: str | int, input_type: str,
                          func: Callable[[Any], Any], **deploy: Any) -> None:
    """Serialise ``func`` with cloudpickle and deploy it (clipper_admin
    ``deployers.python.deploy_python_closure``). ``deploy`` goes to
    :meth:`.admin.ClipperConnection.deploy_model` (num_replicas, batch_size, batching...)."""
    _deploy_saved(conn, name, version, input_type, save_python_closure(func), **deploy)


def deploy_sklearn_model(conn: Any, name: str, version: str | int, input_type: str,
                         model: Any, **deploy: Any) -> None:
    """Deploy a fitted scikit-learn estimator; the container calls ``model.predict``."""
    _deploy_saved(conn, name, version, input_type, save_sklearn_model(model), **deploy)


def deploy_pytorch_model(conn: Any, name: str, version: str | int, input_type: str,
                         module: Any = None, input_shape: tuple[int, ...] | None = None,
                         *, device: str = "cpu", output: str = "raw", func: Any = None,
                         pytorch_model: Any = None, **deploy: Any) -> None:
    """Deploy a torch module on CPU or CUDA: the container feeds it a float32 tensor of
    ``input_shape``. Clipper's own form (clipper_admin ``deployers/pytorch.py``),
    ``deploy_pytorch_model(conn, name, version, input_type, func, pytorch_model)`` with
    ``func(model, inputs)`` doing the pre- and post-processing, is taken too (by keyword
    or by position) and deploys that call as a closure."""
    if pytorch_model is None and callable(module) and not hasattr(module, "parameters"):
        func, pytorch_model = module, input_shape  # Clipper's positional (func, model)
    if func is not None or pytorch_model is not None:
        if func is None or pytorch_model is None:
            raise TypeError("deploy_pytorch_model: Clipper's form takes both func and "
                            "pytorch_model; ours takes the module (and input_shape)")
        deploy_python_closure(conn, name, version, input_type,
                              lambda xs: func(pytorch_model, xs), **deploy)
        return
    _deploy_saved(conn, name, version, input_type,
                  save_torch_model(module, input_shape, device, output), **deploy)


def create_endpoint(conn: Any, name: str, input_type: str, func: Callable[[Any], Any],
                    default_output: Any = "None", version: str | int = 1,
                    slo_micros: int = 3_000_000, **deploy: Any) -> None:
    """Register an app, deploy ``func`` as a model of the same name, and link them
    (clipper_admin ``deployers.python.create_endpoint``)."""
    conn.register_application(name, input_type, default_output, slo_micros)
    deploy_python_closure(conn, name, version, input_type, func, **deploy)
    conn.link_model_to_app(name, name)
