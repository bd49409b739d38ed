"""Shared fixtures. Tests must not write outside their temporary folders."""

import os

import pytest
from hypothesis import HealthCheck, settings

# One Hypothesis profile wherever the suite runs. Without it the settings depend on the
# environment: with CI (or GITHUB_ACTIONS, ...) set Hypothesis loads its "ci" profile
# (no deadline, no database, derandomized), without it a test whose one example took
# over 200 ms (a busy two-core machine) fails as "Unreliable test timings", and every
# run writes its example database to .hypothesis/ in the working directory.
settings.register_profile("casebook", parent=settings.get_profile("default"),  # not "ci"
                          deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("casebook")


@pytest.hookimpl(trylast=True)  # after pytest's tmp_path plugin has configured
def pytest_configure(config):
    """Hypothesis's own files (the local-constants cache it fills at collection, the
    unicode tables) went to .hypothesis/ in the working directory, the repository."""
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(config._tmp_path_factory.mktemp("hypothesis"))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep the CPU probe's cache (and anything else under XDG_CACHE_HOME) per session."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session", autouse=True)
def _private_tmpdir(tmp_path_factory):
    """Point every temporary file of the session, ours and our child processes', at
    pytest's own folder, which pytest prunes: a cluster or model directory made without
    a path (``minips-run-*``, ``*-clipper-model``) is kept for its user to read, and
    the suite used to leave about 35 of them in /tmp at each run."""
    import tempfile

    d = str(tmp_path_factory.mktemp("tmp"))
    old_env, old_dir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = d, d
    yield
    tempfile.tempdir = old_dir
    if old_env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old_env


@pytest.fixture
def race():
    """``race(f, g, ...)`` runs the functions in threads at once, with Python switching
    threads as often as it can (more interleavings for a race to show in), and raises
    the first exception any of them raised."""
    import sys
    import threading
    import time

    def run(*fns, switch_s: float = 1e-5, timeout: float = 120.0) -> None:
        errors: list[BaseException] = []

        def go(fn):
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
                errors.append(e)
        # daemons: one still stuck after the timeout must not keep pytest from exiting
        threads = [threading.Thread(target=go, args=(fn,), daemon=True) for fn in fns]
        old = sys.getswitchinterval()
        sys.setswitchinterval(switch_s)
        t_end = time.monotonic() + timeout
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(max(0.0, t_end - time.monotonic()))
        finally:
            sys.setswitchinterval(old)
        if errors:
            raise errors[0]
        stuck = [getattr(fn, "__name__", repr(fn))
                 for fn, t in zip(fns, threads, strict=True) if t.is_alive()]
        if stuck:  # a deadlock is a failure, not a pass with work left running
            raise TimeoutError(f"still running after {timeout:g} s: {', '.join(stuck)}")
    return run


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where CUDA is available (scripts/gpu-suite.sh)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; run scripts/gpu-suite.sh on one")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
