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
    chunks = list(demo.stream("", "", 21, 64, 96, "histream", 0))
    for (_, frames, _, _), tensor in zip(chunks, decoded):  # on a CPU the array is the decoded tensor's memory
        assert frames.ctypes.data == tensor.data_ptr()
    assert [c[0] for c in chunks] == [0, 1]
    for _, frames, denoise, vae in chunks:
        assert frames.dtype == np.uint8 and frames.flags["C_CONTIGUOUS"] and frames.shape[1:] == (64, 96, 3)
        assert denoise > 0 and vae > 0
    assert sum(c[1].shape[0] for c in chunks) == 21


def test_requests_are_checked_before_any_chunk_runs(demo):
    with pytest.raises(ValueError, match="4k\\+1"):
        demo.stream("", "", 20, 64, 96, "histream", 0)
    with pytest.raises(ValueError, match="either a prompt or prompt_embeds_path"):
        demo.stream("a fox", "x.pt", 21, 64, 96, "histream", 0)
    with pytest.raises(ValueError, match="no text encoder"):
        demo.stream("a fox", "", 21, 64, 96, "histream", 0)
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        host.open_engine("/tmp", "", "int8", "cpu", "torch", False, False)
    with pytest.raises(ValueError, match="model_dir is empty"):
        host.open_engine("", "", "float32", "cpu", "torch", False, False)


def test_closing_a_stream_early_closes_the_engine_stream(demo, monkeypatch):
    inner = []
    engine_stream = demo.engine.stream
    monkeypatch.setattr(demo.engine, "stream", lambda *a, **k: inner.append(engine_stream(*a, **k)) or inner[-1])
    stream = demo.stream("", "", 33, 64, 96, "histream", 0)
    next(stream)
    assert inner[0].holds_caches  # suspended after its first chunk
    stream.close()  # what a C++ cancel does
    assert inner[0].closed and not inner[0].holds_caches  # closed at once, not left to the garbage collector
    assert len(list(demo.stream("", "", 33, 64, 96, "histream", 0))) == 3
