"""The live surfaces fuzzed (hypothesis), on plain serve: a live stream gets a random sequence of actions, each a
WebSocket message (random JSON values and nesting, unicode, binary, sizes at the message limit, prompt switches with
random fields), a REST switch with a random body, or closing the socket. Invariants:

- the server answers every message (an ``error`` on that socket, or the switch's ``prompt`` event) or, after a cancel
  or a close, ends the stream and closes the socket cleanly;
- a cancel sent afterwards always ends the stream;
- no answer is a 500, and every REST answer is one the API documents;
- the next stream runs: each example's live stream reaches its first chunk, and a bounded stream at the end is done.

20 examples in the default suite (5 s on an idle 2-core machine, about 20 s on a loaded one); HISTREAM_SLOW_TESTS=1
runs 300 (80 s idle).
"""

import json
import os
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("PIL")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from histream_engine import host  # noqa: E402
from histream_engine.serve import guards  # noqa: E402
from histream_engine.serve.guards import MAX_BODY_BYTES, MAX_WS_MESSAGE_CHARS  # noqa: E402
from histream_engine.serve.local.transport import local_app  # noqa: E402
from histream_engine.serve.protocol import Limits  # noqa: E402

SLOW = os.environ.get("HISTREAM_SLOW_TESTS") == "1"
LIVE = {"live": True, "width": 32, "height": 32, "schedule": "histream_plus", "prompt_embeds": "calm.pt"}
FINAL = ("done", "cancelled", "failed")
REST_ANSWERS = {200, 400, 404, 409, 413, 422}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
names = st.sampled_from(["calm.pt", "storm.pt", "batch.pt", "missing.pt", "../calm.pt", "/etc/passwd", ""]) | st.text(max_size=20)
switches = st.fixed_dictionaries({}, optional={"prompt": st.text(max_size=40) | json_values, "prompt_embeds": names | json_values,
                                               "recache": st.booleans() | json_values, "extra": json_values})
commands = switches.map(lambda body: json.dumps({"type": "prompt", **body}))
nested = st.tuples(st.integers(1, 8000), st.sampled_from(["[]", "{}"])).map(
    lambda d: "[" * d[0] + "]" * d[0] if d[1] == "[]" else '{"a":' * min(d[0], 3000) + "1" + "}" * min(d[0], 3000))
at_the_limit = st.integers(MAX_WS_MESSAGE_CHARS - 2, MAX_WS_MESSAGE_CHARS + 2).map(
    lambda n: '{"type": "prompt", "prompt": "' + "é" * (n - 30) + '"}')
texts = st.one_of(commands, st.builds(json.dumps, json_values), nested, at_the_limit, st.text(max_size=60),
                  st.just('{"type": "pause"}'), st.just("[" * 40 + "]" * 40))
actions = st.one_of(st.tuples(st.just("text"), texts), st.tuples(st.just("bytes"), st.binary(max_size=40)),
                    st.tuples(st.just("rest"), switches | json_values),
                    st.tuples(st.just("rest_raw"), nested | st.integers(MAX_BODY_BYTES - 2, MAX_BODY_BYTES + 2).map(lambda n: "x" * n)),
                    st.tuples(st.just("close"), st.none()))


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    import torch

    embeds = tmp_path_factory.mktemp("embeds")
    tiny = host.tiny_demo("cpu", "torch", 0, decoder="tae")  # the tiny TAEHV decodes faster: more examples a second
    dim = tiny.engine.dit.config.text_dim
    for name, seed in (("calm.pt", 1), ("storm.pt", 2)):
        torch.save(torch.randn(8, dim, generator=torch.Generator().manual_seed(seed)), embeds / name)
    torch.save(torch.randn(2, 8, dim), embeds / "batch.pt")
    app = local_app(tiny, "tiny", Limits(max_frames=9, max_side=32, max_queue=2, max_live_seconds=120), embeds_dir=embeds)
    with TestClient(app) as c:
        yield c


class Socket:
    """The test's side of one WebSocket: how many of its messages still owe an answer, and the stream's end."""

    def __init__(self, ws):
        self.ws, self.owed, self.end = ws, 0, None

    def read(self) -> dict | None:
        msg = self.ws.receive()
        assert msg["type"] != "websocket.close", f"the socket closed ({msg.get('code')}) before the stream's final event"
        if msg.get("text") is None:
            return None  # a JPEG frame
        event = json.loads(msg["text"])
        self.owed -= event["type"] in ("error", "prompt")
        if event["type"] in FINAL:
            self.end = event
        return event

    def until(self, done, deadline: float, what: str) -> None:
        while not done():
            assert time.time() < deadline, what
            self.read()


def act(client, ws: Socket, sid: str, action: str, payload) -> str:
    """One action: "on", or "cancelled" / "closed" when it ended the stream (the sequence stops there)."""
    if action == "close":
        ws.ws.close()
        return "closed"
    if action == "bytes":
        ws.ws.send_bytes(payload)
        ws.owed += 1
    elif action == "text":
        ws.ws.send_text(payload)
        command, _ = guards.decode_command({"text": payload})
        if command is not None and command["type"] == "cancel":
            return "cancelled"
        ws.owed += 1
    else:
        body = payload if action == "rest_raw" else json.dumps(payload)  # NaN and Infinity too, as Python writes them
        r = client.post(f"/api/streams/{sid}/prompt", content=body, headers={"content-type": "application/json"})
        assert r.status_code in REST_ANSWERS, (r.status_code, r.text)
        ws.owed += r.status_code == 200  # an accepted switch's prompt event comes to every watcher
    return "on"


@settings(max_examples=300 if SLOW else 20, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(actions, min_size=1, max_size=8 if SLOW else 5))
def test_a_live_stream_answers_every_message_and_a_cancel_ends_it(client, sequence):
    job = client.post("/api/streams", json=LIVE)
    assert job.status_code == 201, job.text
    sid, deadline = job.json()["id"], time.time() + 120
    with client.websocket_connect(f"/api/streams/{sid}/ws") as raw:
        ws = Socket(raw)
        while (event := ws.read()) is None or event["type"] != "chunk":  # the stream runs before it is steered
            assert ws.end is None and time.time() < deadline, ws.end
        outcome = "on"
        for action, payload in sequence:
            if (outcome := act(client, ws, sid, action, payload)) != "on":
                break
        if outcome != "closed":
            ws.until(lambda: ws.owed <= 0 or ws.end is not None, deadline, f"{ws.owed} messages unanswered")
            if outcome == "on" and ws.end is None:
                raw.send_text('{"type": "cancel"}')
            ws.until(lambda: ws.end is not None, deadline, "a cancel did not end the stream")
            assert ws.end["type"] == "cancelled", ws.end
    while (state := client.get(f"/api/streams/{sid}").json()["state"]) not in FINAL:  # a close cancels it too
        assert time.time() < deadline, "closing the socket did not end the stream"
        time.sleep(0.05)
    assert state == "cancelled"


def test_the_next_stream_is_done(client):
    job = client.post("/api/streams", json={"frames": 9, "width": 32, "height": 32, "schedule": "histream"}).json()
    deadline = time.time() + 120
    while (state := client.get(f"/api/streams/{job['id']}").json()["state"]) not in FINAL:
        assert time.time() < deadline
        time.sleep(0.05)
    assert state == "done"
