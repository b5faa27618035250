"""The Python half of the C++ host API (histream_engine.host): what a C++ callback receives, and the checks a host
request gets before anything runs. The C++ side is tested by ctest (tests/engine/host_tests.cpp)."""

import numpy as np
import pytest

from histream_engine import host


@pytest.fixture(scope="module")
def demo():
    return host.tiny_demo("cpu", "torch", 0)


def test_chunks_arrive_as_contiguous_uint8_frames_without_a_copy(demo, monkeypatch):
    decoded = []
    engine_stream = demo.engine.stream

    def spy(*args, **kwargs):
        for c in engine_stream(*args, **kwargs):
            decoded.append(c.frames)
            yield c

    monkeypatch.setattr(demo.engine, "stream", spy)
    chunks = list(demo.stream(host.HostRequest("", "", 21, 64, 96, "histream", 0)))
    for (_, frames, _, _), tensor in zip(chunks, decoded):  # on a CPU the array is the decoded tensor's memory
        assert frames.ctypes.data == tensor.data_ptr()
    assert [c[0] for c in chunks] == [0, 1]
    for _, frames, denoise, vae in chunks:
        assert frames.dtype == np.uint8 and frames.flags["C_CONTIGUOUS"] and frames.shape[1:] == (64, 96, 3)
        assert denoise > 0 and vae > 0
    assert sum(c[1].shape[0] for c in chunks) == 21


def test_requests_are_checked_before_any_chunk_runs(demo):
    with pytest.raises(ValueError, match="4k\\+1"):
        demo.stream(host.HostRequest("", "", 20, 64, 96, "histream", 0))
    with pytest.raises(ValueError, match="either a prompt or prompt_embeds_path"):
        host.HostRequest("a fox", "x.pt", 21, 64, 96, "histream", 0)
    with pytest.raises(ValueError, match="a live stream has no frame count, but frames=45"):
        host.HostRequest(frames=45, live=True)
    with pytest.raises(ValueError, match="give frames"):
        host.HostRequest(frames=None)
    with pytest.raises(ValueError, match="no text encoder"):
        demo.stream(host.HostRequest("a fox", "", 21, 64, 96, "histream", 0))
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        host.open_engine(host.EngineOptions("/tmp", dtype="int8", device="cpu", text_encoder=False))
    with pytest.raises(ValueError, match="model_dir is empty"):
        host.EngineOptions("", dtype="float32", device="cpu")
    with pytest.raises(TypeError, match="text_encoder must be true or false"):
        host.EngineOptions("/tmp", text_encoder="no")


def test_closing_a_stream_early_closes_the_engine_stream(demo, monkeypatch):
    inner = []
    engine_stream = demo.engine.stream
    monkeypatch.setattr(demo.engine, "stream", lambda *a, **k: inner.append(engine_stream(*a, **k)) or inner[-1])
    stream = demo.stream(host.HostRequest("", "", 33, 64, 96, "histream", 0))
    next(stream)
    assert inner[0].holds_caches  # suspended after its first chunk
    stream.close()  # what a C++ cancel does
    assert inner[0].closed and not inner[0].holds_caches  # closed at once, not left to the garbage collector
    assert len(list(demo.stream(host.HostRequest("", "", 33, 64, 96, "histream", 0)))) == 3


@pytest.fixture(scope="module")
def embeds_file(demo, tmp_path_factory):
    """Prompt embeddings ``[512, text_dim]`` for the tiny model, as a file a C++ host names."""
    import torch
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("embeds") / "prompt.safetensors"
    prompt = torch.zeros_like(demo.default_prompt[0])  # [512, text_dim]
    prompt[:8] = torch.randn(8, prompt.shape[1], generator=torch.Generator().manual_seed(1))
    save_file({"prompt_embeds": prompt}, str(path))
    return str(path)


def test_a_live_handle_reports_the_switch_on_the_chunk_after_it(demo, embeds_file):
    stream = demo.open(host.HostRequest("", "", None, 64, 64, "histream", 0, live=True))
    first, second = stream.next_chunk(), stream.next_chunk()
    assert (first[0], second[0]) == (0, 1) and first[4] is None and second[4] is None
    stream.set_prompt("", embeds_file, True)
    index, frames, _, _, switch = stream.next_chunk()
    recache, forwards, seconds = switch
    assert index == 2 and frames.shape == (12, 64, 64, 3)
    assert recache is True and forwards > 0 and seconds > 0
    assert stream.next_chunk()[4] is None  # reported once
    with pytest.raises(ValueError, match="needs a prompt or prompt embeddings"):
        stream.set_prompt("", "", True)
    stream.close()
    assert stream.next_chunk() is None
    with pytest.raises(RuntimeError, match="this stream is closed"):
        stream.set_prompt("", embeds_file, True)


def test_a_bounded_handle_ends_with_none(demo):
    stream = demo.open(host.HostRequest("", "", 21, 64, 64, "histream", 0))
    assert [stream.next_chunk()[0] for _ in range(2)] == [0, 1]
    assert stream.next_chunk() is None


def test_the_tiny_demo_decodes_with_a_taew2_1_file(tmp_path):
    from histream_engine import CheckpointError
    from histream_engine.model.taehv import TAEHV, TAEHVConfig
    from histream_engine.taehv_checkpoint import save_taehv

    path = save_taehv(TAEHV(TAEHVConfig(channels=(24, 16, 8, 8))), tmp_path / "taew2_1.pth")
    engine = host.tiny_demo("cpu", "torch", 0, tae_path=str(path))
    assert engine.engine.vae.name == "taehv" and engine.engine.vae.config.channels == (24, 16, 8, 8)
    (_, frames, _, _), = list(engine.stream(host.HostRequest("", "", 9, 32, 32, "self_forcing", 0)))
    assert frames.shape == (9, 32, 32, 3)
    with pytest.raises(ValueError, match="not both"):
        host.tiny_demo("cpu", "torch", 0, decoder="tae", tae_path=str(path))
    with pytest.raises(CheckpointError, match="absent.pth do not exist"):
        host.tiny_demo("cpu", "torch", 0, tae_path=str(tmp_path / "absent.pth"))


def test_check_output_names_a_parent_that_is_a_file(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="a_file is a file, not a folder"):
        host.check_output(str(tmp_path / "a_file" / "h.rgb"), "", False)
    with pytest.raises(ValueError, match="does not exist; create it first"):
        host.check_output(str(tmp_path / "missing" / "h.rgb"), "", False)
    host.check_output(str(tmp_path / "missing" / "h.mp4"), ".mp4", True)  # the mp4 writer makes the folder
    with pytest.raises(ValueError, match="must end in .mp4"):
        host.check_output(str(tmp_path / "h.avi"), ".mp4", True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # checking writes nothing
