import pytest
import torch

from histream_engine.video import Mp4Writer

pytest.importorskip("imageio_ffmpeg")


def test_failure_mid_stream_leaves_nothing(tmp_path):
    out = tmp_path / "v.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with Mp4Writer(out, 32, 16) as writer:
            writer.write(torch.zeros(4, 16, 32, 3, dtype=torch.uint8))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_rejects_wrong_frames_and_names(tmp_path):
    with pytest.raises(ValueError, match=".mp4"):
        Mp4Writer(tmp_path / "v.avi", 32, 16)
    with Mp4Writer(tmp_path / "v.mp4", 32, 16) as writer:
        with pytest.raises(ValueError, match="uint8"):
            writer.write(torch.zeros(1, 32, 16, 3, dtype=torch.uint8))  # H and W swapped
        writer.write(torch.zeros(1, 16, 32, 3, dtype=torch.uint8))
    assert (tmp_path / "v.mp4").stat().st_size > 0
