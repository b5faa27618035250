"""The /v1 videos in ``--data-dir``: one folder a video, ``videos/<id>/``, with

- ``record.json``: what the video object shows and how it was asked for (written whole, then renamed into place);
- once completed: ``video.mp4``, ``thumbnail.jpg``, ``spritesheet.jpg`` and ``state.safetensors``, the stream's final
  state without its rings (``StreamState.save``), which an extension resumes;
- the inputs its stream needs while it waits or runs: ``reference.png`` (an ``input_reference``, kept for a remix),
  ``source.mp4`` (an uploaded video it extends), ``prefix.mp4`` and ``resume.safetensors`` (hard links to the
  extended video's mp4 and state, so deleting that video meanwhile takes nothing from this one).

A finished video (completed or failed) is kept until its ``expires_at`` (``--retention-seconds`` after it finished),
and all videos' files stay within ``--max-stored-bytes``: the oldest finished videos go first. Expired videos are
removed at every call (listing, reading, writing), so none is ever served late. A restarted server reads the
folders back: its finished videos list and extend as before; one still pending goes on where the server kept its job
(plain serve's ``--data-dir`` resumes it), and is failed with the reason when next read where it did not
(``service.VideoService``: its stream is no longer known).

Thread-safe: the routes, the engine's worker (plain serve) or the store actor's threads (Ray) call it at once.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

from . import media
from .options import VideoOptions
from .wire import V1Error

ID = re.compile(r"^video_[0-9a-f]{32}$")
VARIANTS = {"video": ("video.mp4", "video/mp4"), "thumbnail": ("thumbnail.jpg", "image/jpeg"),
            "spritesheet": ("spritesheet.jpg", "image/jpeg")}
INPUTS = ("reference.png", "source.mp4", "prefix.mp4", "resume.safetensors")


def new_id() -> str:
    return f"video_{secrets.token_hex(16)}"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


class VideoStore:
    """``options.data_dir``'s videos; without one, a temporary folder that ``close`` removes."""

    def __init__(self, options: VideoOptions):
        self.options = options
        self._tmp = tempfile.TemporaryDirectory(prefix="histream-videos-") if options.data_dir is None else None
        self.root = Path(options.data_dir or self._tmp.name) / "videos"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._records: dict[str, dict] = {}
        self._load()

    # ---- reading back what a previous server left ----
    def _load(self) -> None:
        for folder in self.root.iterdir():
            if not folder.is_dir() or not ID.match(folder.name):
                continue
            try:
                rec = json.loads((folder / "record.json").read_text())
            except (OSError, ValueError):
                shutil.rmtree(folder, ignore_errors=True)  # a create that never finished writing its record
                continue
            self._records[rec["id"]] = rec
        self.sweep()

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    # ---- records ----
    def _folder(self, video_id: str) -> Path:
        return self.root / video_id

    def _write(self, rec: dict) -> None:
        path = self._folder(rec["id"]) / "record.json"
        tmp = path.with_name(".record.json.partial")
        tmp.write_text(json.dumps(rec))
        tmp.replace(path)

    def _finish(self, rec: dict, status: str, **fields) -> None:
        now = time.time()
        rec.update(status=status, completed_at=int(now), expires_at=math.ceil(now + self.options.retention_seconds),
                   finished=now, **fields)
        for name in INPUTS:
            if not (name == "reference.png" and status == "completed"):  # a remix reads the reference again
                (self._folder(rec["id"]) / name).unlink(missing_ok=True)
        rec["bytes"] = folder_bytes(self._folder(rec["id"]))
        self._write(rec)

    def create(self, rec: dict, inputs: dict[str, bytes], adopt: dict[str, tuple[str, str]] | None = None) -> dict:
        """A new pending video: its record, its uploaded ``inputs`` (name -> bytes) and the files it ``adopt``s from
        another video (name -> (that video's id, its file)), hard-linked where the file system allows."""
        self.sweep()
        folder = self._folder(rec["id"])
        folder.mkdir()
        try:
            for name, data in inputs.items():
                (folder / name).write_bytes(data)
            for name, (other, source) in (adopt or {}).items():
                src = self._folder(other) / source
                try:
                    os.link(src, folder / name)
                except OSError:
                    shutil.copyfile(src, folder / name)
            rec = {**rec, "status": "pending", "created": time.time(), "bytes": folder_bytes(folder)}
            self._write(rec)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        with self._lock:
            self._records[rec["id"]] = rec
        self._keep_within(rec["id"])
        return dict(rec)

    def get(self, video_id: str) -> dict | None:
        self.sweep()
        with self._lock:
            rec = self._records.get(video_id)
            return None if rec is None else dict(rec)

    def page(self, after: str | None, limit: int, order: str) -> tuple[list[dict], bool]:
        """Up to ``limit`` records after the one named ``after``, oldest first (``asc``) or newest first (``desc``),
        and whether more follow."""
        self.sweep()
        with self._lock:
            recs = sorted(self._records.values(), key=lambda r: (r["created"], r["id"]), reverse=order == "desc")
        start = 0
        if after is not None:
            ids = [r["id"] for r in recs]
            if after not in ids:
                raise V1Error(400, f"after names no video on this server ({after[:60]!r}): it may have been deleted or "
                                   "expired; list from the start", "after", "invalid_cursor")
            start = ids.index(after) + 1
        chosen = recs[start : start + limit]
        return [dict(r) for r in chosen], start + limit < len(recs)

    def set_stream(self, video_id: str, stream_id: str) -> None:
        with self._lock:
            rec = self._records.get(video_id)
            if rec is not None and rec["status"] == "pending":
                rec["stream_id"] = stream_id
                self._write(rec)

    def fail(self, video_id: str, code: str, message: str) -> None:
        """A pending video failed (its stream did, was cancelled, or is lost); a finished one stays as it is."""
        with self._lock:
            rec = self._records.get(video_id)
            if rec is not None and rec["status"] == "pending":
                self._finish(rec, "failed", error={"code": code, "message": message[:2000]})

    def delete(self, video_id: str) -> bool:
        with self._lock:
            rec = self._records.pop(video_id, None)
        if rec is None:
            return False
        shutil.rmtree(self._folder(video_id), ignore_errors=True)
        return True

    def sweep(self) -> None:
        """Remove every video whose files have expired."""
        now = time.time()
        with self._lock:
            gone = [r["id"] for r in self._records.values() if r.get("expires_at") is not None and now >= r["expires_at"]]
        for video_id in gone:
            self.delete(video_id)

    def _keep_within(self, keep: str) -> None:
        """Drop the oldest finished videos (never ``keep``, never a pending one) until all fit in --max-stored-bytes."""
        with self._lock:
            total = sum(r["bytes"] for r in self._records.values())
            finished = sorted((r for r in self._records.values() if r["status"] != "pending" and r["id"] != keep),
                              key=lambda r: r["created"])
        for rec in finished:
            if total <= self.options.max_stored_bytes:
                break
            if self.delete(rec["id"]):
                total -= rec["bytes"]

    # ---- what the engine side reads and hands back ----
    def job_inputs(self, video_id: str) -> dict[str, bytes]:
        """The input files a pending video's stream needs (name -> bytes)."""
        folder = self._folder(video_id)
        return {name: (folder / name).read_bytes() for name in ("reference.png", "source.mp4", "resume.safetensors")
                if (folder / name).is_file()}

    def complete(self, video_id: str, mp4: bytes | Path, state: bytes | None) -> None:
        """A pending video's stream is done: ``mp4`` is what it generated (bytes, or a file that is copied) and
        ``state`` its final state's safetensors bytes (None where the stream cannot give one). The stored video is
        the part it extends followed by these frames, with a thumbnail and a spritesheet of the whole. A video deleted
        meanwhile is not brought back. Raises (after failing the video with the reason) when the files cannot be made."""
        with self._lock:
            rec = self._records.get(video_id)
        if rec is None or rec["status"] != "pending":
            return
        folder = self._folder(video_id)
        try:
            self._assemble(rec, folder, mp4, state)
        except Exception as exc:
            self.fail(video_id, "storage_failed", f"the video's files could not be made: {type(exc).__name__}: {exc}")
            raise
        with self._lock:
            if self._records.get(video_id) is not rec:
                shutil.rmtree(folder, ignore_errors=True)  # deleted while its files were made
                return
            self._finish(rec, "completed", error=None)
        self._keep_within(video_id)

    def _assemble(self, rec: dict, folder: Path, mp4: bytes | Path, state: bytes | None) -> None:
        new = folder / "new.mp4"
        if isinstance(mp4, Path):
            shutil.copyfile(mp4, new)
        else:
            new.write_bytes(mp4)
        final = folder / "video.mp4"
        if rec["job"]["kind"] == "upload":
            media.reencode(folder / "source.mp4", folder / "prefix.mp4")
        if (folder / "prefix.mp4").is_file():
            media.concat([folder / "prefix.mp4", new], final)
            new.unlink()
        else:
            new.replace(final)
        thumbnail, spritesheet = media.previews(final, rec["frames"])
        (folder / "thumbnail.jpg").write_bytes(thumbnail)
        (folder / "spritesheet.jpg").write_bytes(spritesheet)
        if state is not None:
            (folder / "state.safetensors").write_bytes(state)

    # ---- what the routes serve ----
    def has_state(self, video_id: str) -> bool:
        return (self._folder(video_id) / "state.safetensors").is_file()

    def content(self, video_id: str, variant: str) -> Path | None:
        """A completed video's file; None when it has gone (deleted or expired meanwhile)."""
        path = self._folder(video_id) / VARIANTS[variant][0]
        return path if path.is_file() else None


class AsyncStore:
    """The store as the routes reach it, every call awaitable: a ``VideoStore`` in this process (run in a thread) or
    the store actor over Ray (``ray.videos``). ``call(name, *args)`` makes one call."""

    def __init__(self, call):
        self._call = call

    async def create(self, rec: dict, inputs: dict[str, bytes], adopt: dict | None = None) -> dict:
        return await self._call("create", rec, inputs, adopt)

    async def get(self, video_id: str) -> dict | None:
        return await self._call("get", video_id)

    async def page(self, after: str | None, limit: int, order: str) -> tuple[list[dict], bool]:
        return await self._call("page", after, limit, order)

    async def set_stream(self, video_id: str, stream_id: str) -> None:
        await self._call("set_stream", video_id, stream_id)

    async def fail(self, video_id: str, code: str, message: str) -> None:
        await self._call("fail", video_id, code, message)

    async def delete(self, video_id: str) -> bool:
        return await self._call("delete", video_id)

    async def sweep(self) -> None:
        await self._call("sweep")

    async def has_state(self, video_id: str) -> bool:
        return await self._call("has_state", video_id)

    async def content(self, video_id: str, variant: str) -> Path | bytes | None:
        return await self._call("content", video_id, variant)
