"""A /v1 request's fields and files, from a JSON body or a form (multipart, as the SDK sends ``create`` and
``extend``, or urlencoded), and each field read as what it must be, refused with 400 and the field's name otherwise.

The body's size was bounded before it reached the route (``guards.BodyLimit``: 16 KiB for JSON, --max-upload-bytes
for the upload routes' forms), so a form's files are read whole here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from ..guards import excerpt
from .wire import bad

MAX_PROMPT_CHARS = 2000


@dataclass
class Upload:
    filename: str
    content_type: str
    data: bytes


@dataclass
class Form:
    fields: dict = field(default_factory=dict)  # name -> a JSON value, or a form field's text
    files: dict[str, Upload] = field(default_factory=dict)

    def check_known(self, known: set[str]) -> None:
        unknown = sorted((set(self.fields) | set(self.files)) - known)
        if unknown:
            raise bad(f"unknown fields {[excerpt(u, 40) for u in unknown]}; this route takes {sorted(known)}", unknown[0],
                      "unknown_parameter")

    def text(self, name: str, required: bool = False, default: str | None = None, limit: int = MAX_PROMPT_CHARS) -> str | None:
        value = self.fields.get(name)
        if value is None:
            if required:
                raise bad(f"{name} is required", name, "missing_required_parameter")
            return default
        if not isinstance(value, str):
            raise bad(f"{name} must be a string, got {excerpt(value, 40)}", name)
        if len(value) > limit:
            raise bad(f"{name} is {len(value)} characters, over this server's limit of {limit}", name)
        return value

    def integer(self, name: str, low: int, high: int) -> int | None:
        value = self.fields.get(name)
        if value is None:
            return None
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise bad(f"{name} must be a whole number from {low} to {high}, got {excerpt(value, 40)}", name)
        return value


async def read_form(request: Request) -> Form:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):
            raise bad("the body is not JSON") from None
        if not isinstance(body, dict):
            raise bad(f"the body must be a JSON object, got {excerpt(body, 60)}")
        return Form(body)
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return await _form(request)
    raise bad(f"send a JSON object (application/json) or a form (multipart/form-data), not {excerpt(kind or 'no content type', 60)}")


async def _form(request: Request) -> Form:
    try:
        parsed = await request.form(max_files=2, max_fields=32)
    except (MultiPartException, ValueError, AssertionError) as exc:
        raise bad(f"the form cannot be read: {excerpt(str(exc), 200)}") from None
    form = Form()
    try:
        for name, value in parsed.multi_items():
            if name in form.fields or name in form.files:
                raise bad(f"{excerpt(name, 40)} is given twice", name)
            if isinstance(value, UploadFile):
                form.files[name] = Upload(value.filename or "", value.content_type or "", await value.read())
            else:
                form.fields[name] = value
    finally:
        await parsed.close()
    return form
