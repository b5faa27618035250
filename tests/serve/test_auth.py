"""The API key (serve/auth.py): with one set, every route (/v1, /api, the page, the WebSocket) answers only a request
that carries it, 401 otherwise (the openai SDK's AuthenticationError on /v1); an upload without it is refused before
its body is read; the page asks for the key once and keeps it for the tab; a non-loopback --host without a key stops
the CLI with one line, unless --no-auth."""

import json
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

import openai_checks as checks  # noqa: E402
from openai_checks import openai  # noqa: E402

from histream_engine import host  # noqa: E402
from histream_engine.serve import auth  # noqa: E402
from histream_engine.serve.local.transport import local_app  # noqa: E402
from histream_engine.serve.openai.options import VideoOptions  # noqa: E402
from histream_engine.serve.protocol import Limits  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")  # SDK 3.63 on every videos call
KEY = "s3cret-key/with+odd=chars"


@pytest.fixture(scope="module")
def http():
    app = local_app(host.tiny_demo("cpu", "torch", 0), "tiny", Limits(max_frames=45, max_side=128),
                    videos=VideoOptions(stand_in_text=True, max_upload_bytes=100_000), key_digest=auth.key_digest(KEY))
    with TestClient(app) as client:
        yield client


def sdk(http, key):
    checks.quiet_sdk()
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http, max_retries=0)


def test_v1_needs_the_key_and_the_sdk_gets_authentication_errors(http):
    for key in ("wrong", KEY[:-1], KEY + "x"):
        with pytest.raises(openai.AuthenticationError) as refused:
            sdk(http, key).videos.list()
        assert refused.value.body["code"] == "invalid_api_key"
    assert sdk(http, KEY).models.list().data[0].id == "histream"
    video = sdk(http, KEY).videos.create_and_poll(prompt="keyed", seconds=checks.ONE_CHUNK, size=checks.SIZE,
                                                  poll_interval_ms=checks.POLL)
    assert video.status == "completed"


def test_every_other_route_needs_the_key_too(http):
    good = {"Authorization": f"Bearer {KEY}"}
    for path in ("/api/info", "/api/streams/nope", "/v1/videos/nope/content"):
        refused = http.get(path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert http.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert http.get("/api/info", headers=good).status_code == 200
    # an upload without the key is answered before its body is read: a Content-Length far over every limit is not sent
    refused = http.post("/v1/videos", headers={"Content-Type": "multipart/form-data; boundary=x", "Content-Length": "999999999"})
    assert refused.status_code == 401


def test_the_page_asks_for_the_key_once_and_keeps_it_for_the_tab(http):
    asked = http.get("/")
    assert asked.status_code == 401 and "text/html" in asked.headers["content-type"]
    assert 'type="password"' in asked.text and "sessionStorage.setItem" in asked.text
    page = http.get("/", headers={"Authorization": f"Bearer {KEY}"})
    assert page.status_code == 200 and 'sessionStorage.getItem("histream-key")' in page.text
    assert "headers: AUTH" in page.text and "PROTOCOLS" in page.text  # its calls and its WebSocket carry the key


def test_a_websocket_offers_the_key_as_a_subprotocol(http):
    stream = http.post("/api/streams", json={"frames": 9, "width": 32, "height": 32, "schedule": "histream"},
                       headers={"Authorization": f"Bearer {KEY}"}).json()["id"]
    encoded = auth.KEY_PROTOCOL + __import__("base64").urlsafe_b64encode(KEY.encode()).decode().rstrip("=")
    with http.websocket_connect(f"/api/streams/{stream}/ws", subprotocols=["histream", encoded]) as ws:
        assert ws.accepted_subprotocol == "histream"  # never the key
        events = []
        while not events or events[-1]["type"] not in ("done", "cancelled", "failed"):
            msg = ws.receive()
            if msg.get("text"):
                events.append(json.loads(msg["text"]))
        assert events[-1]["type"] == "done"
    with http.websocket_connect(f"/api/streams/{stream}/ws", subprotocols=["histream", auth.KEY_PROTOCOL + "d3Jvbmc"]) as ws:
        assert "wrong API key" in ws.receive_json()["error"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4401


def test_a_non_loopback_host_without_a_key_stops_with_one_line(monkeypatch, capsys):
    from histream_engine.cli import main

    monkeypatch.delenv(auth.ENV, raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and len(out.err.strip().splitlines()) == 1, out.err
    assert "--api-key" in out.err and "--no-auth" in out.err


def test_exposure_rules():
    assert auth.is_loopback("127.0.0.1") and auth.is_loopback("::1") and auth.is_loopback("localhost")
    assert not auth.is_loopback("0.0.0.0") and not auth.is_loopback("example.org")
    auth.check_exposure("0.0.0.0", "k", False)
    auth.check_exposure("0.0.0.0", None, True)
    with pytest.raises(ValueError, match="--no-auth"):
        auth.check_exposure("0.0.0.0", None, False)
    with pytest.raises(ValueError, match="contradict"):
        auth.resolve_key("k", True)
    assert auth.resolve_key(None, True) is None and auth.resolve_key("k", False) == "k"


def test_the_key_comes_from_the_environment_and_an_empty_one_is_refused(monkeypatch):
    monkeypatch.setenv(auth.ENV, "from-env")
    assert auth.resolve_key(None, False) == "from-env" and auth.resolve_key("flag", False) == "flag"
    monkeypatch.setenv(auth.ENV, " ")
    with pytest.raises(ValueError, match=auth.ENV):
        auth.resolve_key(None, False)
