"""What the /v1 tests check on either server (plain serve in tests/serve/test_openai_videos.py, Ray in
tests/serve/test_openai_ray.py), through the official ``openai`` SDK: each ``check_*`` takes an ``openai.OpenAI``
client pointed at the server's /v1.

Videos are the tiny demo model's at 32x32: ``seconds="0.5"`` is one chunk (9 frames, 0.5625 s), an extension by
``"0.5"`` one more (12 frames). The demo model has no text encoder; the servers run it with ``stand_in_text`` (a
text's embeddings drawn from its hash, ``demo.stand_in_prompt``), so the exactness checks rebuild the same prompts
here and run the uninterrupted stream on another copy of the same model."""

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

openai = pytest.importorskip("openai")
imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

from histream_engine import host  # noqa: E402
from histream_engine.demo import stand_in_prompt  # noqa: E402
from histream_engine.runtime.denoise.schedules import resolve_schedule  # noqa: E402
from histream_engine.video import Mp4Writer  # noqa: E402

SIZE, SIDE = "32x32", 32
ONE_CHUNK = "0.5"  # 9 frames: one chunk
POLL = 50  # ms


def quiet_sdk() -> None:
    """SDK 3.63 warns on every videos call that OpenAI's own Sora API shut down; these calls go to our server."""
    warnings.filterwarnings("ignore", message=".*[Ss]ora.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="openai")


def decode(mp4: bytes) -> np.ndarray:
    """An mp4's frames ``[T, H, W, 3]`` uint8."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.mp4"
        path.write_bytes(mp4)
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        width, height = next(reader)["size"]
        return np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])


def encoded(frames: np.ndarray) -> bytes:
    """``frames`` through the servers' own encoder (``Mp4Writer``), as a server writes a stream's part."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ref.mp4"
        with Mp4Writer(path, frames.shape[2], frames.shape[1]) as writer:
            writer.write(torch.from_numpy(frames))
        return path.read_bytes()


def create(client, prompt="a red kite", seconds=ONE_CHUNK, **extra):
    return client.videos.create_and_poll(prompt=prompt, seconds=seconds, size=SIZE, poll_interval_ms=POLL,
                                         extra_body=extra or None)


def poll(client, video):
    return client.videos.poll(video.id, poll_interval_ms=POLL)


def content(client, video_id, variant="video") -> bytes:
    return client.videos.download_content(video_id, variant=variant).read()


def uninterrupted(first: str, then: str, seed: int, threads: int | None = None) -> np.ndarray:
    """The demo model's stream of two chunks under ``first``, switched to ``then`` with a re-cache after chunk 0: the
    second chunk's frames ``[12, H, W, 3]``. ``threads``: torch's CPU threads while it runs, as many as the server's
    engine has (a Ray replica of half a CPU has one), since the order of a matmul's sums follows them."""
    import torch

    demo = host.tiny_demo("cpu", "torch", 0, encoder=True)
    config = demo.engine.dit.config
    prompt = lambda text: stand_in_prompt(text, config.text_len, config.text_dim)  # noqa: E731
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        stream = demo.engine.stream(prompt(first), 21, SIDE, SIDE, resolve_schedule("histream"), seed=seed)
        chunks = []
        for c in stream:
            chunks.append(c.frames[0].numpy())
            if c.index == 0:
                stream.set_prompt(prompt(then), recache=True)
    finally:
        torch.set_num_threads(before)
    return chunks[1]


# ---- the checks ----
def check_create_poll_and_download(client):
    video = create(client)
    assert video.status == "completed" and video.progress == 100 and video.error is None
    assert video.size == SIZE and video.seconds == "0.5625" and video.model == "histream"  # 0.5 s: one chunk, 9 frames
    assert video.expires_at > video.completed_at >= video.created_at
    frames = decode(content(client, video.id))
    assert frames.shape == (9, SIDE, SIDE, 3)
    for variant in ("thumbnail", "spritesheet"):
        assert content(client, video.id, variant)[:2] == b"\xff\xd8"  # JPEG
    assert [m.id for m in client.models.list().data] == ["histream"]
    return video


def check_list_pages_and_delete(client):
    made = [client.videos.create(prompt=f"page {i}", seconds=ONE_CHUNK, size=SIZE) for i in range(3)]
    ids = [v.id for v in made]  # listed while they wait or run, as once they are done
    newest = client.videos.list(limit=2, order="desc")
    assert [v.id for v in newest.data] == ids[::-1][:2] and newest.has_more
    seen, after = [], None
    while True:  # ascending, one a page, from the oldest: ours come last, in creation order
        page = client.videos.list(limit=1, order="asc", **({"after": after} if after else {}))
        seen += [v.id for v in page.data]
        if not page.has_more:
            break
        after = page.data[-1].id
    assert seen[-3:] == ids and len(seen) == len(set(seen))
    deleted = client.videos.delete(ids[1])
    assert deleted.deleted and deleted.id == ids[1]
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(ids[1])
    with pytest.raises(openai.NotFoundError):
        content(client, ids[1])
    assert ids[1] not in [v.id for v in client.videos.list(limit=100).data]
    for video_id in (ids[0], ids[2]):  # a waiting one's stream leaves the queue, a running one stops after its chunk
        client.videos.delete(video_id)
    return ids


def check_extend_by_id_is_exact(client, form: bool, threads: int | None = None):
    """The stitched video's first part is the original's frames, and its new part the uninterrupted stream switched to
    the new prompt with a re-cache at the original's end, encoded alike (both decode to the same frames)."""
    seed = 11 + form
    original = create(client, prompt="a lighthouse", seed=seed)
    body = {"video": {"id": original.id}, "prompt": "a storm", "seconds": ONE_CHUNK}
    options = {"headers": {"Content-Type": "multipart/form-data"}} if form else {}  # the form: video[id]
    started = client.post("/videos/extensions", body=body, cast_to=openai.types.Video, options=options)
    assert started.status in ("queued", "in_progress")
    extended = poll(client, started)
    assert extended.status == "completed" and extended.seconds == "1.3125" and extended.size == SIZE  # 9 + 12 frames
    stitched, first = decode(content(client, extended.id)), decode(content(client, original.id))
    assert stitched.shape[0] == 21
    np.testing.assert_array_equal(stitched[:9], first)
    reference = uninterrupted("a lighthouse", "a storm", seed, threads)
    np.testing.assert_array_equal(stitched[9:], decode(encoded(reference)))
    return original, extended


def check_extend_an_upload(client, source_id):
    mp4 = content(client, source_id)
    started = client.videos.extend(video=("clip.mp4", mp4, "video/mp4"), prompt="the same, at dusk", seconds=ONE_CHUNK)
    extended = poll(client, started)
    assert extended.status == "completed", extended.error
    stitched = decode(content(client, extended.id))
    assert stitched.shape[0] == 9 + 12 and extended.seconds == "1.3125"
    # the upload's part is encoded again (its encoder's settings are not known), so it is near, not equal
    assert np.abs(stitched[:9].astype(int) - decode(mp4).astype(int)).mean() < 3
    return extended


def check_input_reference_and_remix(client):
    image = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    png = io.BytesIO()
    from PIL import Image

    Image.fromarray(image).save(png, format="PNG")
    made = client.videos.create(prompt="from a picture", seconds=ONE_CHUNK, size=SIZE,
                                input_reference=("ref.png", png.getvalue(), "image/png"), extra_body={"seed": 5})
    video = poll(client, made)
    assert video.status == "completed", video.error
    same = poll(client, client.videos.remix(video.id, prompt="from a picture"))
    other = poll(client, client.videos.remix(video.id, prompt="something else"))
    assert same.remixed_from_video_id == other.remixed_from_video_id == video.id
    assert (same.size, same.seconds, other.size, other.seconds) == (video.size, video.seconds) * 2
    frames = decode(content(client, video.id))
    np.testing.assert_array_equal(decode(content(client, same.id)), frames)  # same seed, image and prompt: the same video
    assert not np.array_equal(decode(content(client, other.id)), frames)
    return video


def png_bytes(side=SIDE) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def check_refusals(client, completed_id):
    bad = [dict(size="33x33"), dict(size="wide"), dict(size="99999x32"), dict(seconds="0"), dict(seconds="-1"),
           dict(seconds="soon"), dict(seconds="3600"), dict(model="sora-2")]
    for change in bad:
        args = {"prompt": "x", "seconds": ONE_CHUNK, "size": SIZE, **change}
        with pytest.raises(openai.BadRequestError) as refused:
            client.videos.create(**args)
        error = refused.value.body
        assert error["message"] and error["param"] in ("size", "seconds", "model"), (change, error)
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve("video_" + "0" * 32)
    with pytest.raises(openai.BadRequestError) as refused:  # not an image
        client.videos.create(prompt="x", seconds=ONE_CHUNK, size=SIZE, input_reference=("a.png", b"not a png", "image/png"))
    assert refused.value.body["param"] == "input_reference"
    with pytest.raises(openai.BadRequestError) as refused:  # an image of another size
        client.videos.create(prompt="x", seconds=ONE_CHUNK, size=SIZE, input_reference=("a.png", png_bytes(64), "image/png"))
    assert "64x64" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError) as refused:  # not a video
        client.videos.extend(video=("a.mp4", png_bytes(), "video/mp4"), prompt="x", seconds=ONE_CHUNK)
    assert refused.value.body["param"] == "video"
    with pytest.raises(openai.APIStatusError) as refused:  # over --max-upload-bytes: refused by its Content-Length
        client.videos.extend(video=("a.mp4", b"\0" * 300_000, "video/mp4"), prompt="x", seconds=ONE_CHUNK)
    assert refused.value.status_code == 413 and refused.value.body["code"] == "request_too_large"
    running = client.videos.create(prompt="long", seconds="2", size=SIZE)  # 3 chunks: still going when extended
    with pytest.raises(openai.ConflictError):
        client.post("/videos/extensions", body={"video": {"id": running.id}, "prompt": "y", "seconds": ONE_CHUNK},
                    cast_to=openai.types.Video)
    with pytest.raises(openai.ConflictError):
        client.videos.remix(running.id, prompt="y")
    client.videos.delete(running.id)
    with pytest.raises(openai.NotFoundError):
        client.post("/videos/extensions", body={"video": {"id": "video_nope"}, "prompt": "y", "seconds": ONE_CHUNK},
                    cast_to=openai.types.Video)
    with pytest.raises(openai.BadRequestError):
        client.videos.list(order="sideways")


def check_a_failed_video_cannot_be_extended(client):
    failed = poll(client, client.videos.create(prompt="", seconds=ONE_CHUNK, size=SIZE,
                                               extra_body={"prompt_embeds": "huge.pt"}))  # the model overflows
    assert failed.status == "failed" and failed.error.message
    with pytest.raises(openai.ConflictError) as refused:
        client.post("/videos/extensions", body={"video": {"id": failed.id}, "prompt": "y", "seconds": ONE_CHUNK},
                    cast_to=openai.types.Video)
    assert refused.value.body["code"] == "video_failed"
    with pytest.raises(openai.ConflictError):
        content(client, failed.id)


def check_a_full_history_video_cannot_be_extended(client):
    """self_forcing keeps the whole history: its state needs the rings, which the server does not keep."""
    video = create(client, prompt="no window", schedule="self_forcing")
    assert video.status == "completed"
    with pytest.raises(openai.ConflictError) as refused:
        client.post("/videos/extensions", body={"video": {"id": video.id}, "prompt": "y", "seconds": ONE_CHUNK},
                    cast_to=openai.types.Video)
    assert refused.value.body["code"] == "video_not_extendable"


def check_a_full_queue_is_a_rate_limit(client, max_queue):
    """Videos beyond the queue's room get 429 (``RateLimitError``); deleting them frees it."""
    made = []
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(max_queue + 2):  # one runs (3 chunks: long enough), max_queue wait, the next is refused
            made.append(client.videos.create(prompt="crowd", seconds="2", size=SIZE))
    assert refused.value.body["code"] == "queue_full" and len(made) == max_queue + 1
    for video in made:
        client.videos.delete(video.id)
