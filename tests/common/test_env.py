import subprocess

from common.env import git_commit

"""The machine description every benchmark result carries (common/env.py)."""


def test_git_commit_marks_a_dirty_tree(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f.txt").write_text("a\n")
    git("add", "f.txt")
    git("commit", "-q", "-m", "one")
    clean = git_commit(tmp_path)
    assert clean and not clean.endswith("-dirty")
    (tmp_path / "f.txt").write_text("b\n")
    assert git_commit(tmp_path) == clean + "-dirty"


def test_the_cache_directory_ignores_an_empty_or_relative_xdg_cache_home(monkeypatch,
                                                                          tmp_path):
    """XDG_CACHE_HOME= (set, empty) was the working directory: each directory a command
    ran in got its own probe cache, and a new probe."""
    from pathlib import Path

    from common.devices import cache_dir

    home = Path.home() / ".cache" / "mlsys-casebook"
    for value in ("", "relative/dir"):
        monkeypatch.setenv("XDG_CACHE_HOME", value)
        assert cache_dir() == home
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "mlsys-casebook"

