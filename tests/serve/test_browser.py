"""histream serve in a real headless Chromium (Debian's, driven by Playwright): the page streams the tiny model live,
its canvas changes, the latency panel fills, a second stream is cancelled, and the mp4 of what was shown downloads.
A live stream is started from the page, switched to another prompt and stopped, on both servers. Over Ray the page's
socket is also dropped mid-stream: it reconnects and shows each chunk and frame once.

Skipped, with the reason, where Playwright or Chromium is missing (``.ci/run`` installs both). With
HISTREAM_SCREENSHOT=PATH it also saves a screenshot of the page mid-stream (docs/serve.png was made so).
"""

import os
import shutil

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from live_server import serving  # noqa: E402
from ray_cluster import ray_cluster, ray_server  # noqa: E402,F401 - the session's one Ray deployment (the [ray] case)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
# as the machine's own probe starts it: no sandbox as root, no GPU, no calls home on a closed network
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module", params=["one process", pytest.param("ray", marks=pytest.mark.long)])
def server(request, tmp_path_factory):
    if request.param == "ray":  # the same page over Ray Serve: two replicas of the tiny model on the test cluster
        yield request.getfixturevalue("ray_server") + "/"
        return
    import torch
    from histream_engine import host
    from histream_engine.serve.local.transport import local_app
    from histream_engine.serve.protocol import Limits

    tiny = host.tiny_demo("cpu", "torch", 0)
    embeds = tmp_path_factory.mktemp("embeds")  # two prompts to steer a live stream between
    for name, seed in (("calm.pt", 1), ("storm.pt", 2)):
        torch.save(torch.randn(8, tiny.engine.dit.config.text_dim, generator=torch.Generator().manual_seed(seed)), embeds / name)
    app = local_app(tiny, "the embedded tiny demo model", Limits(max_frames=81, max_side=256), embeds)
    with serving(app, "warning") as base:
        yield base + "/"


def canvas_pixels(page) -> list[int]:
    return page.evaluate("""() => { const c = document.getElementById('video');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 97 == 0)); }""")


def test_page_streams_live_cancels_and_downloads(server, tmp_path, request):
    over_ray = request.node.callspec.params["server"] == "ray"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(accept_downloads=True)
        page.goto(server)
        sync_api.expect(page.locator("#model")).to_contain_text("tiny demo model")
        sync_api.expect(page.locator("#model")).to_contain_text("on CPU (float32), decoder wan")  # what the engine runs
        for field, value in (("#frames", "45"), ("#width", "128"), ("#height", "128")):
            page.fill(field, value)
        page.select_option("#schedule", "self_forcing")  # 4 chunks, the slowest schedule: time to watch it play
        blank = canvas_pixels(page)
        if over_ray:  # the socket drops mid-stream (as when an ingress restarts), between chunk 0's 2nd frame and its 3rd:
            # the page reconnects within the grace and gets the history again, and the frames it missed
            page.evaluate("() => { const plain = onFrame; let n = 0; onFrame = (b) => { plain(b); if (++n === 2) ws.close(); }; }")
        page.click("#start")
        page.wait_for_function("() => document.getElementById('shown').textContent.match(/^[1-9]\\d* \\//)", timeout=60_000)
        first = canvas_pixels(page)
        page.wait_for_function("() => parseInt(document.getElementById('shown').textContent) >= 12", timeout=60_000)
        later = canvas_pixels(page)
        assert first != blank and later != first  # frames are drawn, and they change
        if os.environ.get("HISTREAM_SCREENSHOT"):
            page.screenshot(path=os.environ["HISTREAM_SCREENSHOT"], full_page=True)
        ttff = page.locator("#ttff").inner_text()
        assert ttff.endswith(" s") and float(ttff[:-2]) > 0
        assert float(page.locator("#spf").inner_text()) > 0 and "MiB" in page.locator("#cache").inner_text()
        assert page.locator("#chunks tr").count() >= 2  # header + at least one chunk row
        sync_api.expect(page.locator("#status")).to_contain_text("Done: 4 chunks", timeout=120_000)
        assert page.locator("#chunks tr").count() == 1 + 4  # the history a reconnect replays is not shown twice
        page.wait_for_function("() => document.getElementById('shown').textContent === '45 / 45'", timeout=30_000)
        with page.expect_download() as download:
            page.click("#mp4")
        path = tmp_path / "shown.mp4"
        download.value.save_as(path)
        assert path.stat().st_size > 1000 and path.read_bytes()[4:8] == b"ftyp"

        page.click("#start")  # a second stream, cancelled once its first chunk arrives
        page.wait_for_function("() => document.querySelectorAll('#chunks tr').length >= 2", timeout=60_000)
        page.click("#cancel")
        sync_api.expect(page.locator("#status")).to_contain_text("Cancelled after", timeout=60_000)
        assert page.locator("#start").is_enabled()

        page.fill("#frames", "44")  # a bad request: the server's message on the page
        page.click("#start")
        sync_api.expect(page.locator("#status")).to_contain_text("Refused (400)", timeout=10_000)
        sync_api.expect(page.locator("#status")).to_contain_text("4k+1")
        browser.close()


def test_page_steers_a_live_stream_and_stops_it(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page()
        page.goto(server)
        sync_api.expect(page.locator("#model")).to_contain_text("tiny demo model")
        for field, value in (("#width", "64"), ("#height", "64")):
            page.fill(field, value)
        page.check("#live")
        assert page.locator("#frames").is_disabled()
        page.select_option("#embeds", "calm.pt")
        page.click("#start")
        page.wait_for_function("() => document.querySelectorAll('#chunks tr').length >= 3", timeout=60_000)  # two chunks in
        page.select_option("#new-embeds", "storm.pt")
        page.click("#switch")
        switched = page.locator("#chunks tr.switched")
        sync_api.expect(switched).to_have_count(1, timeout=60_000)
        assert "re-cached" in switched.inner_text()
        rows = page.locator("#chunks tr").count()
        received = int(page.locator("#shown").inner_text().split("/")[1])
        # frames keep coming after the switch: two more chunks, and their frames on the page
        page.wait_for_function(f"() => document.querySelectorAll('#chunks tr').length >= {rows + 2}", timeout=60_000)
        page.wait_for_function(f"() => parseInt(document.getElementById('shown').textContent.split('/')[1]) > {received}",
                               timeout=30_000)
        page.click("#cancel")
        sync_api.expect(page.locator("#status")).to_contain_text("Cancelled after", timeout=60_000)
        assert page.locator("#start").is_enabled() and page.locator("#switch").is_disabled()
        browser.close()


def test_a_keyed_server_asks_for_the_key_once_and_the_page_works_with_it(tmp_path):
    """With --api-key the page asks once, keeps the key for the tab (a reload does not ask again), and its calls, its
    WebSocket and its mp4 download carry it."""
    from histream_engine import host
    from histream_engine.serve import auth
    from histream_engine.serve.local.transport import local_app
    from histream_engine.serve.protocol import Limits

    app = local_app(host.tiny_demo("cpu", "torch", 0), "the embedded tiny demo model", Limits(max_frames=81, max_side=256),
                    key_digest=auth.key_digest("page-key"))
    with serving(app, "warning") as base, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(accept_downloads=True)
        page.goto(base + "/")
        page.fill("#key", "not-the-key")
        page.click("button")
        sync_api.expect(page.locator("#key-status")).to_contain_text("not this server's")
        page.fill("#key", "page-key")
        page.click("button")
        sync_api.expect(page.locator("#model")).to_contain_text("tiny demo model", timeout=30_000)  # /api/info, keyed
        page.reload()  # the same tab: the key is kept, nothing is asked
        sync_api.expect(page.locator("#model")).to_contain_text("tiny demo model", timeout=30_000)
        for field, value in (("#frames", "9"), ("#width", "32"), ("#height", "32")):
            page.fill(field, value)
        page.click("#start")  # the POST and the WebSocket carry the key
        sync_api.expect(page.locator("#status")).to_contain_text("Done: 1 chunks", timeout=60_000)
        with page.expect_download() as download:
            page.click("#mp4")
        path = tmp_path / "keyed.mp4"
        download.value.save_as(path)
        assert path.read_bytes()[4:8] == b"ftyp"
        browser.close()

