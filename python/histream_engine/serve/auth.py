"""The API key (``--api-key`` or ``HISTREAM_API_KEY``): with one set, every route answers only a request that carries
``Authorization: Bearer <key>``; a missing or wrong key gets 401 before the route (or the body-size guard) runs.

- ``/v1`` answers in OpenAI's error shape (``invalid_api_key``), ``/api`` with ``{"detail": ...}``.
- The page (``GET /``) answers a browser without the key with a small form that asks for it, keeps it in the tab's
  ``sessionStorage`` and fetches the page with it; the page then sends it with each of its calls.
- A browser cannot set headers on a WebSocket, so a socket may carry the key as a subprotocol instead:
  ``histream.key.<the key in unpadded base64url>``, offered beside ``histream``, which the server selects (it never
  echoes the key). A query parameter would put the key in access logs, the browser's history and proxies' logs.

Only a SHA-256 digest of the key is held (and, over Ray, sent to the ingress replicas), and digests are compared
with ``hmac.compare_digest``, in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os

ENV = "HISTREAM_API_KEY"
SUBPROTOCOL = "histream"  # what the server selects when a socket offers it (the page always does)
KEY_PROTOCOL = "histream.key."  # + the key in unpadded base64url
LOOPBACK_NAMES = ("localhost",)


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def resolve_key(given: str | None, no_auth: bool) -> str | None:
    """The key the server requires: ``--api-key``, else ``HISTREAM_API_KEY``; None with ``--no-auth``."""
    if no_auth:
        if given:
            raise ValueError("--api-key and --no-auth contradict each other: give one")
        return None
    key = given if given is not None else os.environ.get(ENV)
    if key is not None and not key.strip():
        raise ValueError(f"the API key ({'--api-key' if given is not None else ENV}) is empty: give a key, or --no-auth")
    return key


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(host: str, key: str | None, no_auth: bool) -> None:
    """A server reachable from other machines needs a key, unless ``--no-auth`` says it is meant to be open."""
    if key is None and not no_auth and not is_loopback(host):
        raise ValueError(f"--host {host} is reachable from other machines and no API key is set: give --api-key (or "
                         f"{ENV}), or --no-auth to serve without one")


def offered_key(protocols: list[str]) -> str | None:
    for protocol in protocols:
        if protocol.startswith(KEY_PROTOCOL):
            encoded = protocol[len(KEY_PROTOCOL):]
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (ValueError, UnicodeDecodeError):
                return ""
    return None


def chosen_subprotocol(scope) -> str | None:
    """The subprotocol a WebSocket's accept names: ``histream`` when the client offered it (the page does, beside its
    key), else none."""
    return SUBPROTOCOL if SUBPROTOCOL in scope.get("subprotocols", ()) else None


class RequireKey:
    """ASGI middleware: a request without the key never reaches the app."""

    def __init__(self, app, digest: bytes):
        self.app, self.digest = app, digest

    def _matches(self, key: str | None) -> bool:
        return key is not None and hmac.compare_digest(key_digest(key), self.digest)

    @staticmethod
    def _bearer(scope) -> str | None:
        value = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = value.partition(" ")
        return key.strip() if scheme.lower() == "bearer" else None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        key = self._bearer(scope)
        if scope["type"] == "websocket" and key is None:
            key = offered_key(scope.get("subprotocols") or [])
        if self._matches(key):
            return await self.app(scope, receive, send)
        why = "no API key given" if key is None else "wrong API key"
        if scope["type"] == "websocket":
            return await refuse_socket(scope, receive, send, why)
        return await refuse_http(scope, send, why)


def refusal_body(path: str, why: str) -> tuple[bytes, bytes]:
    """(content type, body) of a 401 for ``path``."""
    if path.startswith("/v1"):
        error = {"message": f"{why}: send Authorization: Bearer <this server's key>", "type": "invalid_request_error",
                 "param": None, "code": "invalid_api_key"}
        return b"application/json", json.dumps({"error": error}).encode()
    if path == "/":
        return b"text/html; charset=utf-8", KEY_PAGE.encode()
    return b"application/json", json.dumps({"detail": f"{why}: send Authorization: Bearer <this server's key>"}).encode()


async def refuse_http(scope, send, why: str) -> None:
    kind, body = refusal_body(scope.get("path", ""), why)
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", b'Bearer realm="histream"'), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def refuse_socket(scope, receive, send, why: str) -> None:
    """Accepted, told why (as the pump tells of a stream it cannot follow), and closed with 4401."""
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept", "subprotocol": chosen_subprotocol(scope)})
    await send({"type": "websocket.send", "text": json.dumps({"type": "failed", "error": f"{why}: this server needs its API key"})})
    await send({"type": "websocket.close", "code": 4401})


# The answer to a browser that asks for the page without the key: everything in one function, so that nothing of it
# is left in the page's global scope once the page replaces this document.
KEY_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>histream serve: API key</title></head>
<body style="font-family: system-ui, sans-serif; margin: 3em">
<form id="key-form"><label>This server needs its API key: <input id="key" type="password" autocomplete="off" autofocus></label>
<button>Open</button></form><p id="key-status"></p>
<script>
(() => {
  const STORE = "histream-key";
  async function openWith(key) {
    const res = await fetch(location.pathname, { headers: { Authorization: `Bearer ${key}` } });
    if (!res.ok) { sessionStorage.removeItem(STORE); document.getElementById("key-status").textContent = "That key is not this server's."; return; }
    sessionStorage.setItem(STORE, key);
    const html = await res.text();
    document.open(); document.write(html); document.close();
  }
  const saved = sessionStorage.getItem(STORE);
  if (saved) openWith(saved);
  document.getElementById("key-form").onsubmit = (e) => { e.preventDefault(); openWith(document.getElementById("key").value); };
})();
</script>
</body></html>
"""


def install(app, digest: bytes | None) -> None:
    """Added last, so it runs first: an unauthenticated upload is refused before its body is read."""
    if digest is not None:
        app.add_middleware(RequireKey, digest=digest)
