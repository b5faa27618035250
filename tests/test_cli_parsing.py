"""Every command-line entry point parses alike (histream_engine/cli_parser.py; issue 30, items 3, 4 and 6): no
abbreviated flags, an unknown or misspelt flag named first, with the verb's usage and the nearest flag, exit 2; every
option has help and shows its default. The verbs and their flags are read from the parsers, never listed here."""

import argparse
import re

import pytest

from histream_engine import cli
from histream_engine.cli_parser import HelpFormatter, Parser, in_flags, make_parser, number
from histream_engine.runtime.request_checks import RequestError
from test_docs import parser_of


def verbs() -> dict[str, tuple[argparse.ArgumentParser, list[str]]]:
    """Each way into a verb's parser: name -> (parser, the words that reach it)."""
    from histream_engine.bench.live import build_parser as live_parser
    from histream_engine.bench.suite import build_parser as bench_parser

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    found = {name: (p, [name]) for name, p in sub.choices.items() if name != "bench"}
    assert "bench" in sub.choices  # its words go to the suite's own parser (cli.main)
    found["bench"] = (bench_parser(), ["bench"])
    found["bench --live"] = (live_parser(), ["bench", "--live"])
    return found


VERBS = verbs()


def long_flags(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(f for f in parser._option_string_actions if f.startswith("--") and f not in ("--help", "--live"))


def mistakes(parser: argparse.ArgumentParser):
    """(flag, a word that is not a flag: the flag cut short, or with one letter dropped) for every flag."""
    known = set(parser._option_string_actions)
    for flag in long_flags(parser):
        for wrong in (flag[:-1], flag[:-2] + flag[-1]):
            if wrong not in known and len(wrong) > 3:
                yield flag, wrong


def run(argv, capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_refuses_an_abbreviated_or_misspelt_flag_naming_it(verb, capsys):
    parser, words = VERBS[verb]
    checked = 0
    for flag, wrong in mistakes(parser):
        code, err = run([*words, wrong, "1"], capsys)
        lines = [line for line in err.splitlines() if "error:" in line]
        assert code == 2, (wrong, err)
        assert len(lines) == 1 and f"unrecognized argument {wrong}" in lines[0], (wrong, err)
        assert flag in lines[0], f"{wrong}: the message does not point to {flag}: {lines[0]}"
        assert "required" not in err, f"{wrong}: a missing argument was complained of before the unknown flag: {err}"
        assert err.startswith(f"usage: {parser.prog} "), f"{wrong}: not the verb's usage: {err}"
        checked += 1
    assert checked >= len(long_flags(parser))  # at least one wrong word per flag


def test_the_issues_examples(capsys):
    code, err = run(["generate", "--promt", "a cat"], capsys)
    assert code == 2 and "histream generate: error: unrecognized argument --promt; did you mean --prompt?" in err
    code, err = run(["demo", "--frams", "45"], capsys)
    assert code == 2 and err.startswith("usage: histream demo ") and "--frams; did you mean --frames?" in err
    code, err = run(["demo", "--frame", "45"], capsys)
    assert code == 2 and "--frame: flags are never abbreviated; did you mean --frames?" in err
    code, err = run(["demo", "stray"], capsys)
    assert code == 2 and err.startswith("usage: histream demo ") and "unrecognized arguments: stray" in err


def test_values_that_look_like_flags_are_values_where_argparse_reads_them_so():
    p = make_parser("p")
    p.add_argument("--seed", type=int)
    p.add_argument("-j", type=int)
    p.add_argument("rest", nargs="*")
    assert p.parse_args(["--seed", "-1", "-j4", "--", "--anything"]).seed == -1
    assert p.parse_args(["--seed=-3"]).seed == -3
    assert p.unknown_flag(["--seed", "1", "--sed", "2"]) == "--sed"
    assert p.unknown_flag(["--seed=1", "-k"]) == "-k"


ENTRY_POINTS = ["histream_engine.bench.vae", "histream_engine.bench.attention", "histream_engine.bench.gpu_suite",
                "histream_engine.bench.fp8_error", "histream_engine.bench.serve_load"]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_the_bench_scripts_use_the_one_parser(module):
    if module.endswith("serve_load"):
        pytest.importorskip("httpx")
        pytest.importorskip("websockets")
    parser = parser_of(module)
    assert isinstance(parser, Parser) and parser.allow_abbrev is False
    undocumented = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
    assert not undocumented, f"{module}: options without help: {undocumented}"


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_option_has_help_and_shows_its_default(verb):
    parser = VERBS[verb][0]
    assert isinstance(parser, Parser) and parser.allow_abbrev is False
    text = parser.format_help()
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"{verb} {action.option_strings}: no help text"
        if action.default not in (None, argparse.SUPPRESS) and not isinstance(action.default, bool):
            shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else str(action.default)
            entry = HelpFormatter(parser.prog)._get_help_string(action)
            assert f"(default: {shown})" in entry, f"{verb} {action.option_strings[0]}: default {shown} not in its help"
    assert not re.search(r"\bNone\b", text), f"{verb} --help shows None"


def test_serve_help_shows_the_host_and_port(capsys):
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 127.0.0.1)" in text and "(default: 8000)" in text
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 1088)", "(default: 1920)", "(default: 81)", "(default: 0)", "(default: out.mp4)"):
        assert default in text


def test_engine_refusals_are_said_in_the_commands_words():
    p = make_parser("p")
    for flag in ("--frames", "--height", "--attention", "--precision", "--schedule"):
        p.add_argument(flag)
    p.add_argument("--no-thing", dest="thing", action="store_false")
    err = RequestError("num_frames must be 4k+1, got 10", param="num_frames", python_hint="; or None for an unbounded stream")
    assert str(err).endswith("or None for an unbounded stream") and in_flags(err, p) == "--frames must be 4k+1, got 10"
    err = RequestError("precision='fp8' has no core for attention='flash_attn': use torch", param="attention", python_hint=", or x")
    assert in_flags(err, p) == "--precision fp8 has no core for --attention flash_attn: use torch"
    assert in_flags(RequestError("height must be even", param="height"), p) == "--height must be even"
    # a name the command has no flag for stays (the language test finds it), as does a switch's
    assert in_flags(ValueError("kv_dtype='x' and thing=1"), p) == "kv_dtype='x' and thing=1"
    assert in_flags(RequestError("heightx is odd", param="height"), p) == "heightx is odd"
    import pickle

    back = pickle.loads(pickle.dumps(err))
    assert (back.message, back.param, back.python_hint, str(back)) == (err.message, err.param, err.python_hint, str(err))


def test_number_refuses_what_is_not_a_finite_number_in_range():
    p = make_parser("p")
    p.add_argument("--minutes", type=number(float, 1.0, " (a soak)"))
    p.add_argument("--chunks", type=number(int, 12))
    assert p.parse_args(["--minutes", "2.5", "--chunks", "12"]).minutes == 2.5
    for argv in (["--minutes", "nan"], ["--minutes", "inf"], ["--minutes", "0.5"], ["--minutes", "x"], ["--chunks", "3"],
                 ["--chunks", "12.5"]):
        with pytest.raises(SystemExit):
            p.parse_args(argv)


def test_the_same_refusal_in_json_fields():
    from histream_engine.wording import JSON_FIELDS, in_terms

    err = RequestError("num_frames=13 gives 4 latent frames", param="num_frames", python_hint="; or None")
    assert in_terms(err, JSON_FIELDS) == "frames 13 gives 4 latent frames" and str(err).endswith("; or None")
