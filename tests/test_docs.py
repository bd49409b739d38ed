"""The pages point students at tests, files and commands; these checks keep those
pointers true as the code moves on. ``mkdocs build --strict`` (part of ``make test``)
already checks links between pages and the ``:::`` API references; nothing checked what
a page says *in code*: a renamed test, a moved file or a removed CLI flag left the page
wrong without any build failing."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import itertools
import json
import re
from pathlib import Path

import pytest

from common.bench import SUITES, load_suite, markdown, overview
from common.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md")
                                     if "results" not in p.relative_to(ROOT / "docs").parts)]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
# a path into this repository: our own code, tests and scripts (the side-by-side pages
# also name the real systems' files, e.g. ps-lite's tests/test_kv_app_benchmark.cc; those
# end in other suffixes)
PATH = re.compile(r"(?<![\w/.-])((?:tests|systems|common|scripts)/[\w/.-]*\w\.(?:py|sh|json))"
                  r"((?:::\w+)*)")
TEST_NAME = re.compile(r"(?<![\w/])(test_\w+?)(\.\.\.)?(?![\w/.])")


def code_of(page: Path) -> list[tuple[str, bool]]:
    """The code on a page: (text, in_block) for each line of a fenced block
    (continuations joined) and each inline code span outside the blocks."""
    text = page.read_text()
    out = [(line, True) for block in FENCE.findall(text)
           for line in block.replace("\\\n", " ").splitlines()]
    return out + [(span, False) for span in SPAN.findall(FENCE.sub("", text))]


def pointers() -> list[tuple[str, str, bool]]:
    """(page, code, in_block) over every page."""
    return [(page.relative_to(ROOT).as_posix(), code, in_block)
            for page in PAGES for code, in_block in code_of(page)]


TEST_DEFS = {m for p in (ROOT / "tests").rglob("test_*.py")
             for m in re.findall(r"^\s*(?:async )?def (test_\w+)", p.read_text(), re.M)}


def test_the_pages_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/minips/exercises.md", "docs/miniflow/index.md"} <= names
    assert not any(n.startswith("docs/results/") for n in names)


def test_every_file_a_page_names_exists():
    missing = []
    for page, code, _ in pointers():
        for m in PATH.finditer(code):
            path, names = ROOT / m.group(1), [n for n in m.group(2).split("::") if n]
            if not path.exists():
                missing.append(f"{page}: {m.group(0)}")
                continue
            src = path.read_text()
            missing += [f"{page}: {m.group(0)} (no {n})" for n in names
                        if not re.search(rf"^\s*(?:async )?(?:def|class) {n}\b", src, re.M)]
    assert not missing, "\n".join(missing)


def test_every_test_a_page_names_exists():
    """A bare ``test_...`` name is a test function; a name ending in ``...`` is the
    start of one (the fault-tolerance page abbreviates long names)."""
    missing = []
    for page, code, _ in pointers():
        for m in TEST_NAME.finditer(code):
            name, prefix = m.group(1), bool(m.group(2))
            if any((ROOT / "tests").rglob(f"{name}.py")):
                continue  # a test module named by its file's stem
            ok = (any(d.startswith(name) for d in TEST_DEFS) if prefix
                  else name in TEST_DEFS)
            if not ok:
                missing.append(f"{page}: {m.group(0)}")
    assert not missing, "\n".join(missing)


def casebook_commands() -> list[tuple[str, list[str], bool]]:
    """Every ``casebook ...`` a page shows: (page, argv, whole), where ``whole`` marks a
    line in a code block, to be typed as it stands, and not a mention in prose such as
    ``casebook clipper deploy --policy``."""
    return [(page, argv, in_block) for page, code, in_block in pointers()
            for argv in _casebook(code)]


def _casebook(line: str) -> list[list[str]]:
    found = []
    for part in line.split("&&"):
        part = part.strip().removeprefix("$ ").split(" #")[0].split(" | ")[0]
        m = re.match(r"(?:\S+/)?casebook\s+(.*)", part)
        if m:
            found.append(m.group(1).replace("\\|", "|").split())
    return found


# a template's stand-ins: "...", <name>, [optional], SYSTEM, S, W, TAU
TEMPLATE = re.compile(r"\.\.\.|<\w+>|\[|\]|^[A-Z]+$|:[A-Z]+")


@functools.cache
def cli() -> argparse.ArgumentParser:
    return build_parser()  # every system's tree; parsing leaves it as it was


def check(argv: list[str], whole: bool) -> str | None:
    """Why ``casebook argv`` is wrong, or None. Words pick subcommands while there are
    any (``a|b|c`` must list every one: a synopsis); each ``--flag`` must be one the
    subcommand takes; a whole line must parse as it stands (no command runs)."""
    parser = cli()
    for word in argv:
        if word.startswith("-"):
            flag = word.split("=")[0]
            if flag not in parser._option_string_actions:
                return f"{parser.prog} takes no {flag}"
            continue
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:  # a positional argument or a flag's value
            continue
        choices = subs[0].choices
        if "|" in word:
            listed = set(word.split("|"))
            if listed != set(choices):
                return (f"{parser.prog} {word}: the synopsis lists {sorted(listed)}, the CLI "
                        f"has {sorted(choices)}")
            return None
        if word not in choices:
            return f"{parser.prog} has no subcommand {word!r}"
        parser = choices[word]
    if argv[:1] == ["bench"] and "--only" in argv:
        why = _bench_cases(argv)
        if why:
            return why
    if whole and not any(TEMPLATE.search(w) for w in argv):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                cli().parse_args(argv)
        except SystemExit as e:
            if e.code:  # --help exits with 0
                return err.getvalue().strip().splitlines()[-1]
    return None


def _bench_cases(argv: list[str]) -> str | None:
    """``bench SYSTEM --only CASE ...``: each CASE must be one of the suite's cases for
    the device (the CLI finds out only when it runs)."""
    system = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None
    if system not in SUITES:
        return None
    device = argv[argv.index("--device") + 1] if "--device" in argv else "cpu"
    at = argv.index("--only") + 1
    asked = list(itertools.takewhile(lambda w: not w.startswith("-"), argv[at:]))
    have = {c.name for c in load_suite(system) if c.device == device}
    unknown = sorted(set(asked) - have)
    return f"{system} has no {device} case {unknown}; it has {sorted(have)}" if unknown \
        else None


def test_the_commands_are_found():
    commands = casebook_commands()
    assert len(commands) > 40
    assert sum(whole for *_, whole in commands) > 5
    assert any(argv[:2] == ["ps", "launch"] for _, argv, _ in commands)


def test_every_casebook_command_a_page_shows_is_one_the_cli_takes():
    bad = []
    for page, argv, whole in casebook_commands():
        why = check(argv, whole)
        if why:
            bad.append(f"{page}: casebook {' '.join(argv)}\n    {why}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("argv, whole, why", [
    (["bench", "miniflow", "--bogus"], False, "takes no --bogus"),
    (["ps", "launch", "--app", "nope"], True, "invalid choice"),
    (["ps", "lunch"], False, "no subcommand"),
    (["flow", "train|dot"], False, "the synopsis lists"),
    (["clipper", "load"], True, "required"),
    (["bench", "miniflow", "--only", "inter-op", "mlp-stp"], False, "no cpu case ['mlp-stp']"),
])
def test_a_command_the_cli_refuses_is_caught(argv, whole, why):
    """The check above can fail, in each of its ways."""
    assert why in (check(argv, whole) or "")


def test_a_template_or_a_mention_is_not_parsed_whole():
    assert check(["clipper", "load"], False) is None
    assert check(["bench", "SYSTEM", "--device", "cuda"], True) is None
    assert check(["flow", "train|dot|trace"], False) is None


RESULTS = ROOT / "docs" / "results"


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*/*/results.json")),
                         ids=lambda p: "/".join(p.parts[-3:-1]))
def test_each_committed_results_table_is_the_one_its_json_makes(path):
    """The results pages include ``results.md``; ``casebook bench`` writes it from the
    JSON beside it. A hand edit of either (a number spliced into one, a note fixed in the
    other) would leave the page saying something the data does not: regenerate with
    ``common.bench.markdown`` instead."""
    assert path.with_name("results.md").read_text() == markdown(json.loads(path.read_text()))


def test_the_results_overview_is_the_one_the_results_make():
    assert len(list(RESULTS.glob("*/*/results.json"))) >= 8
    assert (RESULTS / "overview.md").read_text() == overview(RESULTS)
