"""An engine refusal in an entry point's own words. The engine's checks name what they refuse by its Python name
(``num_frames``, ``attention='torch_fp8'``) and carry it (``RequestError.param``); an entry point that calls those
things otherwise (the CLI's ``--frames``, serve's JSON field ``frames``) rewords the message with its names, and
drops the advice only a Python caller can take (``RequestError.python_hint``). The checks stay in one place."""

from __future__ import annotations

import re
from typing import Mapping

from .runtime.request_checks import RequestError

_KEYWORD = re.compile(r"(?<![\w.-])([a-z][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|[^\s,;:)\]]+)")


def in_terms(exc: BaseException, names: Mapping[str, str]) -> str:
    """``exc``'s message for an entry point that calls each Python name ``names[name]``: ``num_frames=13`` ->
    ``--frames 13``; a message about ``param`` that starts with its Python name starts with the entry's; names it
    has no word for stay as they are."""
    text = exc.message if isinstance(exc, RequestError) else str(exc)

    def keyword(m: re.Match) -> str:
        name = names.get(m[1])
        return m[0] if name is None else f"{name} {m[2].strip(chr(39) + chr(34))}"

    text = _KEYWORD.sub(keyword, text)
    param = getattr(exc, "param", None)
    if param in names and re.match(rf"{param}\b(?![=-])", text):
        text = names[param] + text[len(param):]
    return text


# serve's JSON fields for the Python names they differ from (every other name is its own field)
JSON_FIELDS = {"num_frames": "frames", "prompt_embeds_path": "prompt_embeds"}
