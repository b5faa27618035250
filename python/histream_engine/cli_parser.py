"""The one argument parser every command-line entry point makes (``histream`` and its verbs, ``histream bench`` and
``bench --live``, the bench's scripts), so that they all answer alike:

- no abbreviated flags: ``--frame`` is not ``--frames`` (argparse's default would take it, and a later
  ``--frame-rate`` would silently change what it means);
- an unknown or misspelt flag is named first, with the nearest flag the command has, before any complaint about a
  missing required argument (which it may well have caused);
- a verb's errors show the verb's usage (argparse hands a verb's leftovers to the top level, whose usage says nothing
  about them);
- every option's help ends with its default, where it has one to show;
- the engine's refusals are said with the command's flags (``in_flags``: ``--frames``, not ``num_frames``), and
  values are checked where argparse reads them (``number``, ``attention_name``).
"""

from __future__ import annotations

import argparse
import difflib
import math
import sys

from .runtime.runners.precision import FP8_CORES
from .wording import in_terms


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (the bench's docstrings are paragraphs), and each option's default after its help. A
    default of None (the help says what happens then) or a switch's False shows nothing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or not action.option_strings or default is None or default is argparse.SUPPRESS
                or isinstance(default, bool)):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    """argparse's parser with the house rules above; a verb's subparsers are of this class too."""

    def __init__(self, *args, allow_abbrev: bool = False, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, allow_abbrev=allow_abbrev, formatter_class=formatter_class, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        """Parses strictly (argparse calls this for a verb too): an unknown flag first, any leftover after."""
        args = sys.argv[1:] if args is None else list(args)
        flag = self.unknown_flag(args)
        if flag is not None:
            self.error(self.unknown_flag_message(flag))
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def unknown_flag(self, args: list[str]) -> str | None:
        """The first word of ``args`` that argparse would read as a flag and this parser does not have, up to ``--`` or
        a verb (whose words are the verb's parser's)."""
        verbs = {name for action in self._actions if isinstance(action, argparse._SubParsersAction) for name in action.choices}
        for arg in args:
            if arg == "--" or arg in verbs:
                return None
            if len(arg) < 2 or arg[0] not in self.prefix_chars:
                continue  # a value, or "-" (standard input)
            if self._negative_number_matcher.match(arg) and not self._has_negative_number_optionals:
                continue  # a negative number is a value
            flag = arg.split("=", 1)[0]
            if flag in self._option_string_actions:
                continue
            if flag[1] not in self.prefix_chars and flag[:2] in self._option_string_actions:
                continue  # a short option with its value attached (-j4)
            return flag
        return None

    def unknown_flag_message(self, flag: str) -> str:
        flags = [f for f in self._option_string_actions if f.startswith("--")]
        longer = sorted(f for f in flags if f.startswith(flag))
        typos = sorted(f for f in flags if f not in longer and one_edit(flag, f))
        candidates = (longer + typos)[:3] or difflib.get_close_matches(flag, flags, n=1, cutoff=0.6)
        if not candidates:
            return f"unrecognized argument {flag} (see {self.prog} --help)"
        said = candidates[0] if len(candidates) == 1 else f"{', '.join(candidates[:-1])} or {candidates[-1]}"
        return f"unrecognized argument {flag}{': flags are never abbreviated' if longer else ''}; did you mean {said}?"


def one_edit(a: str, b: str) -> bool:
    """Whether ``b`` is ``a`` with one letter dropped, added, changed, or two neighbours swapped."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def make_parser(prog: str | None = None, description: str | None = None, **kwargs) -> Parser:
    """The parser of a command-line entry point (``prog`` as its users type it)."""
    return Parser(prog=prog, description=description, **kwargs)


# Python names whose flag is not the name with dashes; every other name maps to ``--name-with-dashes`` where the
# command has that flag.
PYTHON_NAMES = {"num_frames": "--frames", "tae_path": "--tae", "prompt_embeds_path": "--prompt-embeds"}


def value_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The Python name of each flag of ``parser`` that takes a value -> the flag (switches such as ``--no-text-encoder``
    set a name that they do not spell)."""
    flags = {f: a for a in parser._actions for f in a.option_strings if f.startswith("--") and a.nargs != 0}
    names = {flag[2:].replace("-", "_"): flag for flag in flags}
    names.update({name: flag for name, flag in PYTHON_NAMES.items() if flag in flags})
    return names


def in_flags(exc: BaseException, parser: argparse.ArgumentParser) -> str:
    """An engine refusal in the words of ``parser``'s command line (``wording.in_terms`` with its flags):
    ``num_frames=13`` -> ``--frames 13``, advice only Python can take left out."""
    return in_terms(exc, value_flags(parser))


def attention_name(verb: str, precision_flag: bool):
    """The ``--attention`` value of a verb: a backend's name, but not an FP8 core's. On the command line FP8 is
    ``--precision fp8``, which turns on the FP8 core of the backend named together with the e4m3 caches it reads; a
    verb without that flag says which verbs have it."""
    bases: dict[str, str] = {}
    for base, core in FP8_CORES.items():
        if base not in FP8_CORES.values():
            bases.setdefault(core, base)  # triton_fp8 is triton's (auto picks it too)

    def check(name: str) -> str:
        if name in bases:
            what = f"{name} is the FP8 core of {bases[name]}, which reads e4m3 caches"
            raise argparse.ArgumentTypeError(
                f"{what}: ask for it with --attention {bases[name]} --precision fp8" if precision_flag else
                f"{what}; {verb} has no FP8 option (histream demo, generate and bench have --precision fp8)")
        return name

    return check


def number(kind: type = int, minimum: float = 1, what: str = ""):
    """An argparse type: a finite ``kind`` of at least ``minimum`` (``what`` says why, after the bound)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}{what}, got {text}")
        return value

    return parse
