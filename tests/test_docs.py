"""README.md and docs/*.md stay in step with the code, where that is cheap to check: every command line they show
names a verb and flags its parser has, every page README links exists and every page is linked from README, and
the repository files they name exist. Nothing is run: each parser is built and inspected."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]


class _Parsed(Exception):
    pass


def parser_of(module: str) -> argparse.ArgumentParser:
    """The parser a module's main() builds, caught at its parse_args call, before main does anything."""
    captured = []

    def grab(self, *args, **kwargs):
        captured.append(self)
        raise _Parsed

    main = importlib.import_module(module).main
    with mock.patch.object(argparse.ArgumentParser, "parse_args", grab), pytest.raises(_Parsed):
        main([])
    return captured[0]


def histream_parser() -> argparse.ArgumentParser:
    from histream_engine.cli import build_parser

    return build_parser()


def bench_parser() -> argparse.ArgumentParser:
    from histream_engine.bench.suite import build_parser

    return build_parser()


def live_bench_parser() -> argparse.ArgumentParser:
    from histream_engine.bench.live import build_parser  # `histream bench --live` hands over to the soak (bench/live.py)

    return build_parser()


# What each documented command form runs: the parser it is checked against, and whether its first word is a
# `histream` verb. `histream bench` hands its arguments to the bench suite's own parser (cli.main).
HISTREAM = r"(?:histream|python3? -m histream_engine(?:\.cli)?|torchrun\b.*?\s-m histream_engine(?:\.cli)?)"
FORMS = [
    (re.compile(rf"^{HISTREAM}\s+bench\s+--live\b"), live_bench_parser),
    (re.compile(rf"^{HISTREAM}\s+bench\b"), bench_parser),
    (re.compile(rf"^{HISTREAM}(?=\s)"), None),  # the verb's subparser
    (re.compile(r"^python3? -m (?:histream_engine\.)?bench(?=\s|$)"), bench_parser),
    (re.compile(r"^(?:bench/gpu_suite\.sh|python3? -m (?:histream_engine\.)?bench\.gpu_suite)(?=\s|$)"),
     lambda: parser_of("histream_engine.bench.gpu_suite")),
    (re.compile(r"^python3? (?:bench/attention\.py|-m (?:histream_engine\.)?bench\.attention)(?=\s|$)"),
     lambda: parser_of("histream_engine.bench.attention")),
    (re.compile(r"^python3? -m histream_engine\.kernels\.aot(?=\s|$)"), lambda: parser_of("histream_engine.kernels.aot")),
    (re.compile(r"^python3? -m histream_engine\.native\.resources(?=\s|$)"),
     lambda: parser_of("histream_engine.native.resources")),
]
ENV_PREFIX = re.compile(r"^(?:(?:run:|\$)\s+)?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")


def fragments(text: str):
    """Every shell-looking piece of a page: fenced block lines (backslash continuations joined, comments cut)
    and inline code spans."""
    for block in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if block.group(1) in ("", "bash", "sh", "console", "shell"):
            for line in block.group(2).replace("\\\n", " ").splitlines():
                yield re.sub(r"\s#\s.*$", "", line)
    yield from inline_spans(text)


def inline_spans(text: str) -> list[str]:
    """Inline code spans outside fenced blocks; a span may wrap onto the next line."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose) if "\n\n" not in span]


def commands(text: str):
    """(form's parser factory or None for a histream verb, the command's words after its program)."""
    for fragment in fragments(text):
        for segment in re.split(r"&&|\|\||;|\s\|\s", fragment):
            segment = ENV_PREFIX.sub("", segment.strip())
            for form, factory in FORMS:
                match = form.match(segment)
                if match:
                    yield segment, factory, segment[match.end():].split()
                    break


def python_m_module(segment: str) -> str | None:
    match = re.search(r"(?:^python3?|^torchrun\b.*?)\s-m\s+(\S+)", segment)
    return match and match.group(1)


def documented_commands():
    found = []
    for page in PAGES:
        for segment, factory, words in commands(page.read_text()):
            found.append((page.relative_to(REPO).as_posix(), segment, factory, words))
    return found


def test_the_pages_show_commands():
    found = documented_commands()
    shown = {(page, words[0]) for page, _s, factory, words in found if factory is None and words}
    for page, verb in [("README.md", "demo"), ("docs/cli.md", "generate"), ("docs/graphs.md", "export"),
                       ("docs/graphs.md", "build-trt"), ("docs/serve.md", "serve")]:
        assert (page, verb) in shown, (page, verb)
    assert any(factory is bench_parser and FLAG.search(" ".join(words)) for _p, _s, factory, words in found)


def test_every_documented_command_has_its_verb_and_flags():
    verbs = {action.dest: action for action in histream_parser()._actions if isinstance(action, argparse._SubParsersAction)}
    subparsers = verbs["command"].choices
    parsers: dict = {}
    problems = []
    for page, segment, factory, words in documented_commands():
        module = python_m_module(segment)
        if module:
            spec_name = "histream_engine.bench" + module[len("bench"):] if module.split(".")[0] == "bench" else module
            spec = importlib.util.find_spec(spec_name)
            runnable = spec is not None and (spec.submodule_search_locations is None
                                             or importlib.util.find_spec(spec_name + ".__main__") is not None)
            if not runnable:
                problems.append(f"{page}: `{segment}`: python -m {module} cannot run (no such module, or no __main__)")
                continue
        if factory is None:
            if not words or words[0].startswith("-"):
                continue  # `histream` alone names the program (or the schedule), `histream --help` its help
            verb = words.pop(0)
            if verb not in subparsers:
                problems.append(f"{page}: `{segment}`: no verb {verb!r} (verbs: {sorted(subparsers)})")
                continue
            parser = subparsers[verb]
        else:
            parser = parsers.setdefault(factory, factory())
        known = set(parser._option_string_actions)
        for flag in FLAG.findall(" ".join(shlex.quote(w) for w in words)):
            if flag not in known:
                problems.append(f"{page}: `{segment}`: {flag} is not an option of {parser.prog}")
    assert not problems, "\n".join(problems)


def test_the_command_scanner_sees_what_it_must():
    text = ("```bash\nHISTREAM_X=1 histream export --preset tiny \\\n    --height 64 --out g/   # a --comment\n```\n"
            "`torchrun --nproc-per-node 2 -m histream_engine generate --frames 5` and `python -m bench --repeats 1`,\n"
            "`histream bench --preset cpu-small --schedules histream histream_plus && histream demo --seed 1`\n")
    got = [(segment.split()[0], factory, " ".join(words)) for segment, factory, words in commands(text)]
    assert got == [
        ("histream", None, "export --preset tiny --height 64 --out g/"),
        ("torchrun", None, "generate --frames 5"),
        ("python", bench_parser, "--repeats 1"),
        ("histream", bench_parser, "--preset cpu-small --schedules histream histream_plus"),
        ("histream", None, "demo --seed 1"),
    ]


def links(page: Path) -> list[str]:
    return [target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text())
            if not re.match(r"[a-z]+:", target) and not target.startswith("#")]


def test_readme_links_every_docs_page_and_only_pages_that_exist():
    linked = {(README.parent / target).resolve() for target in links(README)}
    for target in linked:
        assert target.exists(), f"README.md links {target.relative_to(REPO)}, which does not exist"
    unlinked = [page.relative_to(REPO).as_posix() for page in DOCS if page.resolve() not in linked]
    assert not unlinked, f"add a row for {unlinked} to README.md's table of docs pages"


def test_links_inside_docs_pages_exist():
    for page in DOCS:
        for target in links(page):
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links {target}, which does not exist"


PATH_SPAN = re.compile(r"^[\w.*/-]+/[\w.*-]+\.(?:py|cu|h|cpp|hpp|sh|json|txt|cmake|html|md|png|toml)$")
# Where a named file may live: the repository root, the package (`runtime/cache/window.py`), the C++ host
# (`include/histream/histream.hpp`).
PATH_ROOTS = [REPO, REPO / "python/histream_engine", REPO / "engine"]


def test_files_the_pages_name_exist():
    missing = []
    for page in PAGES:
        for span in inline_spans(page.read_text()):
            if PATH_SPAN.match(span) and not span.startswith(".."):
                if not any(list(root.glob(span)) for root in PATH_ROOTS):
                    missing.append(f"{page.relative_to(REPO)}: {span}")
    assert not missing, "named but not in the repository:\n" + "\n".join(missing)
