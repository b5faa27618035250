"""/v1/videos on plain ``histream serve`` (the tiny demo model, 32x32, one-chunk videos), driven by the official
``openai`` SDK over the app: create and poll then download each variant, list pages and delete, extension by id as
JSON and as the form field video[id] (exactly the uninterrupted stream re-cached at the boundary, its first part the
original), extension of an uploaded mp4, input_reference and remix, the SDK's exception classes for bad inputs, and a
restart over the same --data-dir that keeps (and can extend) the videos; the store's retention and byte bound."""

import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402

import openai_checks as checks  # noqa: E402
from openai_checks import openai  # noqa: E402

from histream_engine import host  # noqa: E402
from histream_engine.model.dit import WanDiT  # noqa: E402
from histream_engine.serve.local.transport import local_app  # noqa: E402
from histream_engine.serve.openai.options import VideoOptions  # noqa: E402
from histream_engine.serve.openai.store import VideoStore  # noqa: E402
from histream_engine.serve.protocol import Limits  # noqa: E402
from histream_engine.video import FPS  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")  # SDK 3.63 on every videos call
LIMITS = Limits(max_frames=45, max_side=128, max_queue=4)
UPLOADS = 200_000


@pytest.fixture(scope="module")
def demo():
    return host.tiny_demo("cpu", "torch", 0, encoder=True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    import torch

    embeds = tmp_path_factory.mktemp("embeds")
    torch.save(torch.full((8, WanDiT("tiny").config.text_dim), 3e38), embeds / "huge.pt")  # the model overflows
    return embeds, tmp_path_factory.mktemp("data")


def server(demo, folders):
    embeds, data = folders
    app = local_app(demo, "tiny", LIMITS, embeds_dir=embeds,
                    videos=VideoOptions(data, max_upload_bytes=UPLOADS, stand_in_text=True))
    return TestClient(app)


def sdk(http) -> "openai.OpenAI":
    checks.quiet_sdk()
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)


@pytest.fixture(scope="module")
def client(demo, folders):
    with server(demo, folders) as http:
        yield sdk(http)


@pytest.fixture(scope="module")
def first(client):
    return checks.check_create_poll_and_download(client)


def test_create_and_poll_then_download_the_video_and_its_previews(first):
    assert first.status == "completed"


def test_list_pages_in_order_and_delete_removes_the_video(client):
    checks.check_list_pages_and_delete(client)


def test_extension_by_id_as_json_is_the_uninterrupted_stream_re_cached_at_the_boundary(client):
    checks.check_extend_by_id_is_exact(client, form=False)


def test_extension_by_id_as_the_form_field_video_id(client):
    checks.check_extend_by_id_is_exact(client, form=True)


def test_extension_of_an_uploaded_mp4(client, first):
    checks.check_extend_an_upload(client, first.id)


def test_input_reference_and_remix(client):
    checks.check_input_reference_and_remix(client)


def test_bad_inputs_get_the_sdks_exception_classes(client, first):
    checks.check_refusals(client, first.id)
    checks.check_a_failed_video_cannot_be_extended(client)
    checks.check_a_full_history_video_cannot_be_extended(client)


def test_a_full_queue_is_a_rate_limit(demo, folders, tmp_path):
    embeds, _ = folders
    app = local_app(demo, "tiny", Limits(max_frames=45, max_side=128, max_queue=1), embeds_dir=embeds,
                    videos=VideoOptions(tmp_path, stand_in_text=True))
    with TestClient(app) as http:
        checks.check_a_full_queue_is_a_rate_limit(sdk(http), 1)


def test_a_restarted_server_lists_and_extends_the_stored_videos_and_delete_removes_the_files(demo, folders, tmp_path):
    embeds, _ = folders
    with server(demo, (embeds, tmp_path)) as http:
        before = sdk(http)
        kept = checks.create(before, prompt="kept")
        left = before.videos.create(prompt="left behind", seconds="2", size=checks.SIZE)  # still going at the stop
    with server(demo, (embeds, tmp_path)) as http:  # a new server over the same --data-dir
        again = sdk(http)
        assert {kept.id, left.id} <= {v.id for v in again.videos.list(limit=100).data}
        # the stopping server drained its job at a chunk boundary: the new one goes on from that checkpoint
        resumed = checks.poll(again, again.videos.retrieve(left.id))
        assert resumed.status == "completed" and resumed.seconds == left.seconds
        assert checks.decode(checks.content(again, left.id)).shape[0] == round(float(left.seconds) * FPS)
        assert again.videos.retrieve(kept.id).status == "completed"
        body = {"video": {"id": kept.id}, "prompt": "more", "seconds": checks.ONE_CHUNK}
        extended = checks.poll(again, again.post("/videos/extensions", body=body, cast_to=openai.types.Video))
        assert extended.status == "completed" and extended.seconds == "1.3125"
        assert (tmp_path / "videos" / kept.id / "video.mp4").is_file()
        again.videos.delete(kept.id)
        assert not (tmp_path / "videos" / kept.id).exists()


def test_the_store_expires_videos_on_time_and_keeps_within_its_bytes_oldest_first(tmp_path, client, first):
    mp4 = checks.content(client, first.id)
    store = VideoStore(VideoOptions(tmp_path, retention_seconds=1.0, max_stored_bytes=1 << 20))
    made = []
    for i in range(3):
        rec = store.create({"id": f"video_{i:032x}", "frames": 9, "job": {"kind": "create"}, "prompt": "p"}, {})
        store.complete(rec["id"], mp4, b"state" * 100_000)  # ~0.5 MB each: two fit in 1 MiB
        made.append(rec["id"])
    assert store.get(made[0]) is None and store.get(made[1]) and store.get(made[2])  # the oldest went first
    assert not (tmp_path / "videos" / made[0]).exists()
    time.sleep(max(0.0, store.get(made[2])["expires_at"] - time.time()) + 0.05)
    assert store.get(made[2]) is None and not (tmp_path / "videos" / made[2]).exists()  # expired


def test_a_chunked_upload_over_the_limit_is_refused_while_it_arrives_not_read_whole():
    import asyncio
    import json

    from histream_engine.serve.guards import BodyLimit

    reached, sent, answer = [], [], []

    async def app(scope, receive, send):
        reached.append(scope["path"])

    async def receive():  # ten parts of 100 kB, no Content-Length (chunked)
        sent.append(1)
        return {"type": "http.request", "body": b"\0" * 100_000, "more_body": len(sent) < 10}

    async def send(message):
        answer.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/videos/extensions",
             "headers": [(b"content-type", b"multipart/form-data; boundary=x")]}
    asyncio.run(BodyLimit(app, uploads={"/v1/videos/extensions": UPLOADS})(scope, receive, send))
    assert not reached and len(sent) == 3  # 300 kB read of the 1 MB sent: refused once over 200 kB
    assert answer[0]["status"] == 413 and json.loads(answer[1]["body"])["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("flags, words", [
    (["--data-dir", "/nonexistent-parent/videos"], "does not exist"),
    (["--retention-seconds", "0"], "--retention-seconds"),
    (["--retention-seconds", "nan"], "--retention-seconds"),
    (["--max-stored-bytes", "10"], "--max-stored-bytes"),
    (["--max-upload-bytes", "0"], "--max-upload-bytes"),
    (["--api-key", "k", "--no-auth"], "contradict"),
])
def test_v1_options_that_cannot_work_stop_the_server_with_one_line(flags, words, capsys, tmp_path):
    from histream_engine.cli import main

    assert main(["serve", "--port", "0", *flags]) == 2  # before a model loads or a port opens
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err, err


def test_data_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        VideoOptions(tmp_path / "file")
