"""``Session.run``: the client interface to the runtime (Abadi et al. 2016, section 3.2;
tensorflow/python/client/session.py over core/common_runtime/direct_session.cc).

A step names *fetches* (tensors to return, ops to run) and *feeds* (values for tensors,
usually placeholders). The session turns each distinct (feeds, fetches, targets)
combination into a :class:`~systems.miniflow.plan.Plan` once, caches it, and from then on
a step costs only the executors' work. Variables' values live in the session.
"""

from __future__ import annotations

import collections
import contextlib
import numbers
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from . import shapes
from .executor import NodeStats, StepContext
from .graph import Graph, Operation, Tensor, get_default_graph
from .partition import Rendezvous, run_partitions
from .passes import PassStats
from .plan import Plan, backend_for, build_plan


@dataclass
class GraphOptions:
    constant_folding: bool = True
    common_subexpression: bool = True
    pruning: bool = True
    fusion: bool = True
    remapping: bool = True  # Grappler's RewriterConfig.remapping: passes/remapper.py
    max_constant_bytes: int = 10 << 20

    @classmethod
    def all_off(cls) -> GraphOptions:
        """Every pass off, a new one too: the graph as written (ours; tests and benchmarks
        compare against it)."""
        return cls(**{f.name: False for f in fields(cls) if isinstance(f.default, bool)})


@dataclass
class ConfigProto:
    """Session configuration, with TensorFlow's field names where TF has them."""

    device_count: dict[str, int] = field(default_factory=dict)  # {"CPU": 2, "GPU": 1}
    inter_op_parallelism_threads: int = 0  # 0: one per core
    intra_op_parallelism_threads: int = 0  # 0: leave BLAS/torch threads as they are
    allow_soft_placement: bool = False
    log_device_placement: bool = False
    cpu_backend: str = "numpy"  # or "torch"
    graph_options: GraphOptions = field(default_factory=GraphOptions)
    # miniansor's apply_history_best(log): MatMul (+ bias, ReLU) on torch devices then run
    # the best tuned Triton kernel for their shapes (see tuned.py)
    kernel_library: Any = None


@dataclass
class RunOptions:
    NO_TRACE = 0
    FULL_TRACE = 3
    trace_level: int = 0


@dataclass
class RunMetadata:
    step_stats: list[NodeStats] = field(default_factory=list)
    peak_live_bytes: dict[str, int] = field(default_factory=dict)
    pass_stats: PassStats | None = None
    devices: list[str] = field(default_factory=list)


class _Resources:
    """Per-session state reachable from kernels: variable values, the step's rendezvous,
    the tuned-kernel library and how often its kernels (or the fallback) ran, the random
    ops' streams."""

    def __init__(self, kernel_library: Any = None) -> None:
        self.variables: dict[str, Any] = {}
        self.variable_devices: dict[str, str] = {}  # where each variable's value lives
        self.variable_groups: tuple[int, dict] = (-1, {})  # (graph size, groups) cache
        self.variable_locks: dict[str, threading.Lock] = {}  # see state_ops.variable_lock
        self.rendezvous: Rendezvous | None = None
        self.kernel_library = kernel_library
        self.kernel_stats: Counter = Counter()
        # each random op's generator, by its "stream" attribute: one sequence per op and
        # session, whichever plan runs it (see ops/random_ops.py)
        self.random_streams: dict[int, Any] = {}


_local = threading.local()


def get_default_session() -> Session | None:
    stack = getattr(_local, "stack", [])
    return stack[-1] if stack else None


class Session:
    def __init__(self, target: str = "", graph: Graph | None = None,
                 config: ConfigProto | None = None):
        # the checks and words of TF's session.py, for the mistakes they catch
        if not isinstance(target, str):
            raise TypeError(f"target must be a string, but got {type(target).__name__}. Did "
                            f"you do \"Session(config)\" instead of \"Session(config=config)\"?")
        if target:
            raise ValueError("miniflow has no distributed runtime: use target=''")
        if graph is not None and not isinstance(graph, Graph):
            raise TypeError(f"graph must be a mf.Graph, but got {type(graph).__name__}")
        if config is not None and not isinstance(config, ConfigProto):
            raise TypeError(f"config must be a mf.ConfigProto, but got "
                            f"{type(config).__name__}")
        # not `graph or ...`: an empty Graph is falsy (it has a __len__)
        self.graph = graph if graph is not None else get_default_graph()
        self.config = config or ConfigProto()
        self.devices = self._devices()
        self._resources = _Resources(self.config.kernel_library)
        self._plans: dict[Any, Plan] = {}
        self._lock = threading.Lock()  # one step at a time (see docs: design)
        n = self.config.inter_op_parallelism_threads or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(n, thread_name_prefix="inter-op") if n > 1 else None
        # One long-lived thread per device besides the client's (TF gives each device its
        # own threads), for partitions that send to each other both ways and so must run
        # concurrently (others run one after another on the client's thread): a new thread
        # every step would cost its creation, and on a GPU PyTorch caches cuDNN execution
        # plans per thread (thread_local benchmark_cache in
        # aten/src/ATen/native/cudnn/Conv_v8.cpp), so each new thread rebuilds them.
        self._device_threads: dict[str, ThreadPoolExecutor] = {}
        self._closed = False
        if self.config.intra_op_parallelism_threads:
            _set_intra_op_threads(self.config.intra_op_parallelism_threads)

    def _devices(self) -> list[str]:
        dc = {k.upper(): v for k, v in self.config.device_count.items()}
        # as TF refuses it ("No CPU devices are available in this process"): with none,
        # placement blamed the user's placeholder, and soft placement hit an IndexError
        cpu = dc.get("CPU", 1)
        if not isinstance(cpu, numbers.Integral) or isinstance(cpu, bool) or cpu < 1:
            raise ValueError(f"device_count['CPU'] must be at least 1, got {dc['CPU']!r}: "
                             f"every step runs its feeds and fetches on a CPU")
        cpus = [f"/cpu:{i}" for i in range(dc.get("CPU", 1))]
        want_gpus = dc.get("GPU", 1)
        n_gpus = 0
        if want_gpus:
            import torch

            n_gpus = min(want_gpus, torch.cuda.device_count()) if torch.cuda.is_available() \
                else 0
        return cpus + [f"/gpu:{i}" for i in range(n_gpus)]

    # -- the client API --------------------------------------------------------------
    def run(self, fetches: Any, feed_dict: Mapping | None = None,
            options: RunOptions | None = None, run_metadata: RunMetadata | None = None) -> Any:
        if self._closed:
            raise RuntimeError("Attempted to use a closed Session.")
        leaves, rebuild = _flatten(fetches, self.graph)
        feeds = self._check_feeds(feed_dict) if feed_dict else {}
        # a fetched tensor that is also fed comes back as fed (TF's session.py takes it
        # out of the fetches): the graph need not compute it
        values = {id(t): _as_result(feeds[t]) for t in leaves if t in feeds}
        tensors, targets = _computed(leaves, feeds)
        if not tensors and not targets:  # sess.run([]) is [], as in TF: nothing to run
            return rebuild(lambda leaf: values.get(id(leaf)))
        feed_tensors = sorted(feeds, key=id)
        key = _plan_key(feed_tensors, tensors, targets)
        with self._lock:
            if self._closed:  # closed while this step waited for the one before it
                raise RuntimeError("Attempted to use a closed Session.")
            plan = self._plans.get(key)
            if plan is None:
                plan = build_plan(tensors, targets, feed_tensors, self.devices, self.config,
                                  self._resources)
                self._plans[key] = plan
            trace = options is not None and options.trace_level >= RunOptions.FULL_TRACE
            many = len(plan.executors) > 1
            step = StepContext([feeds[t] for t in feed_tensors],
                               Rendezvous() if many else None, self._pool,
                               [] if trace else None, run_metadata is not None)
            self._resources.rendezvous = step.rendezvous
            results = run_partitions(plan.executors, step, self._on_device_thread,
                                     plan.sequential) if many else [plan.executors[0].run(step)]
        if run_metadata is not None:
            run_metadata.step_stats = step.stats or []
            run_metadata.peak_live_bytes = dict(step.peak_bytes)
            run_metadata.pass_stats = plan.pass_stats
            run_metadata.devices = plan.devices
        for t, (e, pos) in zip(tensors, plan.fetch_map, strict=True):
            values[id(t)] = _as_result(plan.executors[e].backend.to_numpy(results[e][pos]))
        return rebuild(lambda leaf: values.get(id(leaf)))

    def _check_feeds(self, feed_dict: Mapping) -> dict[Tensor, Any]:
        out = {}
        for k, v in feed_dict.items():
            t = _as_graph_element(k, self.graph, "feed_dict key")
            if not isinstance(t, Tensor):
                raise TypeError(f"Cannot feed an Operation ({t.name}); feed a tensor")
            if t.op.type == "VariableV2":  # its output is the variable's name, a handle
                raise TypeError(f"Cannot feed {t.name}, the reference of variable "
                                f"{t.op.name}: feed the variable itself (that replaces its "
                                f"value(), {t.op.name}/read:0, for one step) or set it for "
                                f"good with {t.op.name}.load(value, session)")
            if t.name in self.graph.folded_consts:  # TF would honour it; we cannot
                raise ValueError(f"Cannot feed {t.name}: its value was read when "
                                 f"{', '.join(self.graph.folded_consts[t.name])} was built "
                                 f"(a reshape's constant shape becomes an attribute); give "
                                 f"that reshape a placeholder as its shape, and feed that")
            if v is None or isinstance(v, (Tensor, Operation)) or hasattr(v, "_as_tensor"):
                raise TypeError(f"The value fed to {t.name} cannot be {type(v).__name__}: "
                                f"feed numbers, lists or numpy arrays (a graph's tensor is "
                                f"computed by the graph, not fed)")
            arr = np.asarray(v)
            want = t.dtype.np_dtype
            if arr.dtype != want:
                if not np.can_cast(arr.dtype, want, "same_kind") and \
                        not _whole_numbers_for(arr, want):
                    raise TypeError(f"Cannot feed a value of dtype {arr.dtype} to tensor "
                                    f"'{t.name}' of dtype {t.dtype.name}{_site(t)}"
                                    + (" (some are not whole numbers, or out of its range;"
                                       " TF1 would cut them silently)"
                                       if arr.dtype.kind == "f" and want.kind in "iu" else ""))
                cast = arr.astype(want)
                if arr.dtype.kind in "iu" and want.kind in "iu" and \
                        not np.array_equal(cast, arr):  # ints wrap; floats only round
                    raise ValueError(f"Cannot feed {arr.dtype} values to tensor '{t.name}' "
                                     f"of dtype {t.dtype.name}: some are out of its range "
                                     f"(from {arr.min()} to {arr.max()})")
                arr = cast
            if t.shape != arr.shape and not shapes.compatible(t.shape, arr.shape):
                raise ValueError(f"Cannot feed value of shape {arr.shape} for Tensor "
                                 f"'{t.name}', which has shape '{shapes.fmt(t.shape)}'"
                                 f"{_site(t)}")
            out[t] = arr
        return out

    def _set_variable(self, var: Any, value: Any) -> None:
        if var.graph is not self.graph:  # its name may mean another variable here
            raise ValueError(f"{var.name} is a variable of another graph than this "
                             f"session's")
        # a copy: the caller may change ``value`` afterwards (Variable.load, Saver.restore)
        arr = np.array(value, dtype=var.dtype.np_dtype, copy=True)
        if arr.shape != tuple(var.shape):
            raise ValueError(f"{var.name} has shape {tuple(var.shape)}, got {arr.shape}")
        device = self._resources.variable_devices.setdefault(
            var.op.name, var.device if var.device in self.devices else "/cpu:0")
        self._resources.variables[var.op.name] = backend_for(device, self.config.cpu_backend
                                                             ).asarray(arr)

    def variable_values(self) -> dict[str, np.ndarray]:
        """Every initialised variable's current value, as numpy (for the Saver)."""
        return {k: v.detach().cpu().numpy().copy() if hasattr(v, "detach") else
                np.array(v, copy=True) for k, v in self._resources.variables.items()}

    def plan_for(self, fetches: Any, feed_dict: Mapping | None = None) -> Plan | None:
        """The cached plan for this request, if it has run (for tools and tests)."""
        leaves, _ = _flatten(fetches, self.graph)
        feeds = sorted((_as_graph_element(k, self.graph, "feed") for k in (feed_dict or {})),
                       key=id)
        tensors, targets = _computed(leaves, set(feeds))
        return self._plans.get(_plan_key(feeds, tensors, targets))

    @property
    def kernel_stats(self) -> Counter:
        """Calls of tuned kernels ('tuned') and of the torch fallback ('fallback')."""
        return self._resources.kernel_stats

    def _on_device_thread(self, device: str, fn: Callable[[], None]) -> Any:
        """Run ``fn`` on ``device``'s own thread; returns its future."""
        if device not in self._device_threads:
            self._device_threads[device] = ThreadPoolExecutor(
                1, thread_name_prefix=f"device{device.replace('/', '-')}")
        return self._device_threads[device].submit(fn)

    def close(self) -> None:
        """Waits for a step another thread is running (TF cancels it; steps here are
        short and run one at a time, so waiting is the simpler honest choice)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            for t in self._device_threads.values():
                t.shutdown(wait=False)
            self._closed = True

    @contextlib.contextmanager
    def as_default(self) -> Iterator[Session]:
        """The default session (``Tensor.eval``, ``Operation.run``) inside the block, and
        its graph the default graph; unlike ``with Session()``, not closed at the end
        (``tf.Session.as_default``)."""
        _local.__dict__.setdefault("stack", []).append(self)
        try:
            with self.graph.as_default():
                yield self
        finally:
            _local.stack.pop()

    def __enter__(self) -> Session:
        self._default_ctx = self.as_default()
        return self._default_ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._default_ctx.__exit__(*exc)
        self.close()


class InteractiveSession(Session):
    """A session that is the default from the moment it is made, for a shell or a
    notebook (TF1's): ``t.eval()`` and ``op.run()`` need no ``with``. ``close()`` ends
    it; make and close them in last-in, first-out order, as the ``with`` blocks they
    stand for."""

    def __init__(self, target: str = "", graph: Graph | None = None,
                 config: ConfigProto | None = None):
        super().__init__(target, graph, config)
        self._interactive = self.as_default()
        self._interactive.__enter__()
        self._owner = threading.get_ident()  # the default-session stack is per thread

    def close(self) -> None:
        super().close()
        ctx, self._interactive = self._interactive, None
        if ctx is not None and threading.get_ident() == self._owner:
            ctx.__exit__(None, None, None)  # another thread cannot reach that stack


def _computed(leaves: list, fed: set | dict) -> tuple[list[Tensor], list[Operation]]:
    """The fetched tensors the plan computes (not those fed: they come back as fed) and
    the target ops."""
    return ([x for x in leaves if isinstance(x, Tensor) and x not in fed],
            [x for x in leaves if isinstance(x, Operation)])


def _plan_key(feeds, tensors, targets) -> tuple:
    # Graph elements live as long as their graph (and the session holds the graph), so
    # their identities are stable keys, and cheaper than building names every step.
    return tuple(map(id, feeds)), tuple(map(id, tensors)), tuple(map(id, targets))


def _set_intra_op_threads(n: int) -> None:
    """Intra-op parallelism is the kernels' own threads: BLAS for numpy, torch's pool."""
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)
    torch.set_num_threads(n)


def _as_result(v: np.ndarray) -> Any:
    """What a fetch returns: a numpy scalar for rank 0, else an array of its own."""
    return v[()] if v.ndim == 0 else np.array(v, copy=True)


def _site(t: Tensor) -> str:
    return f" (created at {t.op.created_at})" if t.op.created_at else ""


def _whole_numbers_for(arr: np.ndarray, want: np.dtype) -> bool:
    """Floats fed to an integer tensor are taken when every one is a whole number in its
    range (labels read from a float CSV, as TF1 tutorials feed them). TF1 casts any float
    (1.7 becomes 1); a fraction is more likely a mistake, so we refuse it, loudly."""
    if arr.dtype.kind != "f" or want.kind not in "iu":
        return False
    info, wide = np.iinfo(want), arr.astype(np.float64)
    # float(info.max) + 1 is 2**31 or 2**63 exactly: a float32 or float64 that rounds to
    # the type's largest value is already out of it
    return bool(np.all(np.isfinite(wide)) and np.array_equal(np.trunc(wide), wide) and
                (arr.size == 0 or (wide.min() >= float(info.min) and
                                   wide.max() < float(info.max) + 1)))


def _value_of_ref(t: Any, graph: Graph) -> Any:
    """A fetched variable reference (``"w:0"``, ``w.name``) is the variable's value, as
    in TF1, not the handle its op outputs (the variable's name)."""
    if isinstance(t, Tensor) and t.op.type == "VariableV2":
        for v in graph.get_collection("variables"):
            if v.op is t.op:
                return v._snapshot
    return t


def _as_graph_element(x: Any, graph: Graph, what: str) -> Tensor | Operation:
    if hasattr(x, "_snapshot"):  # a Variable: its one read (never a new op, which a feed
        x = x._snapshot          # of it would feed to nothing, under control_dependencies)
    elif hasattr(x, "_as_tensor"):
        x = x._as_tensor()
    if isinstance(x, str):
        try:
            return graph.get_tensor_by_name(x) if ":" in x else graph.get_operation_by_name(x)
        except (KeyError, ValueError) as e:
            raise ValueError(f"{what} {x!r} names nothing in the graph: {e}") from None
    if isinstance(x, (Tensor, Operation)):
        if x.graph is not graph:
            raise ValueError(f"{what} {x.name} is not an element of this session's graph")
        return x
    raise TypeError(f"Cannot interpret {what} {x!r} as a Tensor or Operation")


def _flatten(fetches: Any, graph: Graph):
    """Leaves of a nested fetch structure, and a function that rebuilds the structure."""
    if isinstance(fetches, Operation) or isinstance(fetches, Tensor) and \
            fetches.op.type != "VariableV2":
        if fetches.graph is graph:
            return [fetches], lambda get: get(fetches)  # the common case, without the walk
    leaves: list[Any] = []

    def walk(x):
        if isinstance(x, Mapping):
            keys = list(x)
            subs = [walk(x[k]) for k in keys]
            pairs = lambda f: zip(keys, (s(f) for s in subs), strict=True)  # noqa: E731
            if isinstance(x, collections.defaultdict):  # its first argument is the factory
                return lambda f: type(x)(x.default_factory, pairs(f))
            return lambda f: type(x)(pairs(f))
        if isinstance(x, (list, tuple)):
            subs = [walk(v) for v in x]
            if hasattr(x, "_fields"):  # namedtuple
                return lambda f: type(x)(*(s(f) for s in subs))
            return lambda f: type(x)(s(f) for s in subs)
        leaf = _value_of_ref(_as_graph_element(x, graph, "fetch"), graph)
        leaves.append(leaf)
        return lambda f: f(leaf)

    build = walk(fetches)
    unique = list({id(x): x for x in leaves}.values())
    return unique, build
