"""The WebSocket of a stream, ``WS /api/streams/{id}/ws``, on either transport (docs/serve.md, "The WebSocket protocol").

The server sends the stream's events (history first), each ``chunk`` followed by its JPEG frames as binary messages,
and closes after the final one. The client sends commands: ``{"type": "cancel"}``, or ``{"type": "prompt", prompt or
prompt_embeds, recache}``. A message that is not a command, or a command the transport refuses, is answered
``{"type": "error"}`` on this socket only, in order with the stream's events, and the stream goes on. No message and
no command ends the listener: whatever one raises is answered, and the next is read; only the client's leaving ends it
(and, on plain serve, cancels a stream nobody watches any more).

A cancel acts at once; other commands are taken one at a time in the order they came (a prompt switch over Ray waits
for the replica's next chunk boundary, and a cancel sent meanwhile must not wait behind it).
"""

from __future__ import annotations

import asyncio

from fastapi import WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from . import auth, guards, protocol
from .protocol import FINAL, PromptSwitchRequest, Refused
from .session import Event
from .transport import Transport, Watch
from ..wording import JSON_FIELDS, in_terms


async def pump(ws: WebSocket, transport: Transport, stream_id: str) -> None:
    await ws.accept(subprotocol=auth.chosen_subprotocol(ws.scope))  # the page offers `histream` beside its key
    try:
        watch = await transport.watch(stream_id)
    except Refused as refused:
        await ws.send_json({"type": "failed", "error": refused.detail})
        await ws.close(code=4000 + refused.status)  # 4404 no such stream, 4429 too many watchers
        return
    outbox: asyncio.Queue = asyncio.Queue()  # the stream's events and this socket's own answers, in order
    tasks = [asyncio.create_task(follow(watch, outbox)), asyncio.create_task(listen(ws, transport, stream_id, outbox))]
    try:
        await send(ws, outbox)
    finally:
        for task in tasks:
            task.cancel()
        await watch.leave()


async def send(ws: WebSocket, outbox: asyncio.Queue) -> None:
    """Until the final event is sent (then the socket closes) or the client has gone."""
    try:
        while (event := await outbox.get()) is not None:
            await ws.send_json(event.data)
            for frame in event.frames:
                await ws.send_bytes(frame)
            if event.data["type"] in FINAL:
                await ws.close()
                return
    except (WebSocketDisconnect, RuntimeError):  # closed under us; Starlette raises RuntimeError on a closed socket
        pass


async def follow(watch: Watch, outbox: asyncio.Queue) -> None:
    while (event := await watch.next()) is not None:
        outbox.put_nowait(event)
        if event.data["type"] in FINAL:
            return


async def listen(ws: WebSocket, transport: Transport, stream_id: str, outbox: asyncio.Queue) -> None:
    """The client's messages, until it leaves (then the sender stops)."""
    commands: asyncio.Queue = asyncio.Queue()
    worker = asyncio.create_task(take_commands(transport, stream_id, commands, outbox))
    try:
        while (message := await ws.receive())["type"] != "websocket.disconnect":
            command, refused = guards.decode_command(message)
            if command is not None and command["type"] == "cancel":
                answer(outbox, await guarded(transport.cancel(stream_id)))
            else:
                commands.put_nowait((command, refused))
    except (WebSocketDisconnect, RuntimeError):  # the client left; Starlette raises RuntimeError on a closed socket
        pass
    finally:
        worker.cancel()
    outbox.put_nowait(None)


async def take_commands(transport: Transport, stream_id: str, commands: asyncio.Queue, outbox: asyncio.Queue) -> None:
    while True:
        command, refused = await commands.get()
        answer(outbox, refused if command is None else await guarded(run_command(transport, stream_id, command)))


def answer(outbox: asyncio.Queue, why: str | None) -> None:
    if why is not None:
        outbox.put_nowait(Event(protocol.error_event(why)))


async def guarded(call) -> str | None:
    """Runs a command; returns why it was refused, or None. Never raises (but for the socket's own cancellation)."""
    try:
        result = await call
    except Refused as refused:
        return guards.excerpt(refused.detail, 600)
    except Exception as exc:  # noqa: BLE001 - a command's failure is answered; the listener goes on
        return f"this command failed ({type(exc).__name__}: {guards.excerpt(str(exc), 300)}); the stream goes on"
    return result if isinstance(result, str) else None


async def run_command(transport: Transport, stream_id: str, command: dict) -> str | None:
    """A command other than cancel; returns why it was refused, or None."""
    if command["type"] != "prompt":
        return f"unknown command type {guards.excerpt(command['type'], 40)!r}; this server takes cancel and prompt"
    try:
        change = PromptSwitchRequest(**{k: v for k, v in command.items() if k != "type"})
    except ValidationError as exc:
        return guards.excerpt(in_terms(exc, JSON_FIELDS), 500)
    await transport.switch(stream_id, change)
    return None
