import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err
from histream_engine import CheckpointError, load_vae
from histream_engine.model.decoder import VideoDecoder
from histream_engine.model.taehv import TAEHV, TAEHVConfig
from histream_engine.taehv_checkpoint import load_taehv, save_taehv

SMALL = TAEHVConfig(channels=(24, 16, 8, 8))  # the published layout at a third of the width: seconds, not minutes


def published_keys(config: TAEHVConfig = TAEHVConfig()) -> dict[str, tuple[int, ...]]:
    """taew2_1's decoder tensors, written out from the published ``nn.Sequential`` (64 of them), and its encoder's."""
    c0, c1, c2, c3 = config.channels
    z = config.latent_channels
    keys = {"decoder.1.weight": (c0, z, 3, 3), "decoder.1.bias": (c0,)}
    for blocks, c in (((3, 4, 5), c0), ((9, 10, 11), c1), ((15, 16, 17), c2)):
        for b in blocks:
            keys |= {f"decoder.{b}.conv.0.weight": (c, 2 * c, 3, 3), f"decoder.{b}.conv.0.bias": (c,)}
            for i in (2, 4):
                keys |= {f"decoder.{b}.conv.{i}.weight": (c, c, 3, 3), f"decoder.{b}.conv.{i}.bias": (c,)}
    keys |= {"decoder.7.conv.weight": (c0, c0, 1, 1), "decoder.8.weight": (c1, c0, 3, 3),
             "decoder.13.conv.weight": (2 * c1, c1, 1, 1), "decoder.14.weight": (c2, c1, 3, 3),
             "decoder.19.conv.weight": (2 * c2, c2, 1, 1), "decoder.20.weight": (c3, c2, 3, 3),
             "decoder.22.weight": (3, c3, 3, 3), "decoder.22.bias": (3,)}
    encoder = {"encoder.0.weight": (64, 3, 3, 3), "encoder.0.bias": (64,), "encoder.2.conv.weight": (64, 128, 1, 1),
               "encoder.3.weight": (64, 64, 3, 3), "encoder.12.conv.weight": (64, 64, 1, 1), "encoder.17.weight": (z, 64, 3, 3),
               "encoder.17.bias": (z,)}
    return keys | encoder


def random_state(config: TAEHVConfig = SMALL, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in published_keys(config).items():
        fan_in = shape[1] * shape[2] * shape[3] if len(shape) == 4 else 1
        state[k] = torch.randn(shape, generator=g) * (1.0 / fan_in**0.5 if len(shape) == 4 else 0.1)
    return state


def reference_decode(state: dict, latents: torch.Tensor) -> torch.Tensor:
    """The published decoder, whole video at once, in its own conventions: NTCHW, batch-major frames, memory as the
    previous frame's input (zeros first), TGrow as a reshape, the first 3 frames trimmed at the end, [0, 1]."""
    conv = lambda x, k: F.conv2d(x, state[k + ".weight"], state.get(k + ".bias"), padding=state[k + ".weight"].shape[-1] // 2)
    x = latents.permute(0, 2, 1, 3, 4)  # NCTHW -> NTCHW
    N, T = x.shape[:2]
    x = x.reshape(N * T, *x.shape[2:])
    x = F.relu(conv(torch.tanh(x / 3) * 3, "decoder.1"))
    for blocks, grow, out in (((3, 4, 5), 7, 8), ((9, 10, 11), 13, 14), ((15, 16, 17), 19, 20)):
        for b in blocks:
            t = x.shape[0] // N
            frames = x.reshape(N, t, *x.shape[1:])
            past = torch.cat([torch.zeros_like(frames[:, :1]), frames[:, :-1]], dim=1).reshape(x.shape)
            h = F.relu(conv(torch.cat([x, past], dim=1), f"decoder.{b}.conv.0"))
            h = conv(F.relu(conv(h, f"decoder.{b}.conv.2")), f"decoder.{b}.conv.4")
            x = F.relu(h + x)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        y = conv(x, f"decoder.{grow}.conv")
        x = y.reshape(-1, x.shape[1], *x.shape[2:])  # each frame's channel groups become consecutive frames
        x = conv(x, f"decoder.{out}")
    x = conv(F.relu(x), "decoder.22").clamp(0, 1)
    video = x.reshape(N, -1, *x.shape[1:])[:, 3:]  # NTCHW in [0, 1], first frames trimmed
    return video.permute(0, 2, 1, 3, 4) * 2 - 1


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These convolutions are tiny: on a shared 2-core machine two OpenMP threads mostly wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    state = random_state()
    path = tmp_path_factory.mktemp("taehv") / "taew2_1.pth"
    torch.save(state, path)
    return state, path


def test_the_published_layout_is_the_models_own():
    """Names and shapes of the full-size model, as the real taew2_1 holds them (the encoder's are not ours)."""
    want = {k: v for k, v in published_keys().items() if k.startswith("decoder.")}
    with torch.device("meta"):
        got = {k: tuple(v.shape) for k, v in TAEHV().state_dict().items()}
    assert len(want) == 64 and got == want


@pytest.mark.parametrize("batch,frames,hw", [(1, 1, (4, 6)), (2, 4, (3, 5)), (1, 7, (5, 4))])
def test_whole_video_matches_the_reference(weights, batch, frames, hw):
    state, path = weights
    model = load_vae(path)
    assert isinstance(model, TAEHV) and isinstance(model, VideoDecoder)
    latents = torch.randn(batch, 16, frames, *hw)
    got = model.decode(latents)
    assert got.shape == (batch, 3, 4 * frames - 3, 8 * hw[0], 8 * hw[1])
    assert rel_err(got, reference_decode(state, latents)) < 1e-5
    assert got.min() >= -1 and got.max() <= 1 and got.std() > 0.1  # weights big enough that the output is not flat


def test_streaming_equals_the_whole_video(weights):
    state, path = weights
    model = load_taehv(path)
    latents = torch.randn(1, 16, 9, 4, 4)
    whole = reference_decode(state, latents)
    carried = model.new_state()
    pieces = [model.decode(latents[:, :, a:b], carried) for a, b in ((0, 3), (3, 6), (6, 7), (7, 9))]
    assert [p.shape[2] for p in pieces] == [9, 12, 4, 8]  # the Wan VAE's counts: 9, then 4 per latent frame
    assert rel_err(torch.cat(pieces, dim=2), whole) < 1e-5
    assert carried.latent_frames == 9


def test_loads_safetensors_and_round_trips(tmp_path, weights):
    state, path = weights
    model = load_taehv(path)
    save_taehv(model, tmp_path / "safetensors" / "taew2_1.safetensors")
    again = load_vae(tmp_path / "safetensors" / "taew2_1.safetensors")
    assert again.config == SMALL
    latents = torch.randn(1, 16, 2, 3, 3)
    assert torch.equal(again.decode(latents), model.decode(latents))


def test_bad_files_are_refused_naming_the_keys(tmp_path, weights):
    state, _ = weights
    partial = dict(state)
    partial.pop("decoder.16.conv.2.bias")
    partial["decoder.99.weight"] = torch.zeros(1)
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: decoder\.16\.conv\.2\.bias(.|\n)*unexpected keys: decoder\.99\.weight"):
        load_vae(tmp_path / "partial.pth")
    wrong = dict(state)
    wrong["decoder.4.conv.0.weight"] = torch.zeros(24, 24, 3, 3)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: decoder\.4\.conv\.0\.weight: checkpoint \(24, 24, 3, 3\)"):
        load_taehv(tmp_path / "wrong.pth")
    wan22 = dict(state)
    wan22["decoder.22.weight"] = torch.zeros(12, 8, 3, 3)
    torch.save(wan22, tmp_path / "taew2_2.pth")
    with pytest.raises(CheckpointError, match="use taew2_1.pth"):
        load_vae(tmp_path / "taew2_2.pth")
    torch.save({"decoder.conv1.weight": torch.zeros(1)}, tmp_path / "wan.pth")
    with pytest.raises(CheckpointError, match="not a TAEHV checkpoint"):
        load_taehv(tmp_path / "wan.pth")
    with pytest.raises(CheckpointError, match="do not exist"):
        load_taehv(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="latents must be"):
        TAEHV(SMALL).decode(torch.randn(1, 15, 1, 2, 2))


def test_tgrow_keeps_channels_last_and_the_frame_order():
    """On a GPU frames are channels-last; TGrow's interleave must give the same frames in either layout."""
    from histream_engine.model.taehv import TGrow

    grow = TGrow(5, 2)
    x = torch.randn(3 * 2, 5, 4, 6)  # [T * B, C, H, W], T = 3, B = 2
    with torch.no_grad():
        plain = grow(x, batch=2)
        last = grow(x.contiguous(memory_format=torch.channels_last), batch=2)
    assert last.is_contiguous(memory_format=torch.channels_last) and rel_err(last, plain) < 1e-6
    y = grow.conv(x).detach().view(3, 2, 2, 5, 4, 6)  # [T, B, j, C, H, W]
    assert torch.equal(plain.view(3, 2, 2, 5, 4, 6), y.transpose(1, 2))  # frame (t, j) of batch b at t * 2B + j * B + b


def test_the_engine_streams_taehv_over_three_chunks_as_the_whole_video_decodes(weights):
    """33 frames, 3 chunks through the Engine with a loaded TAEHV: 9, 12, 12 frames, and the decodes it streamed (the
    state carried by ChunkDecoder) equal the plain reference decoding all 9 latent frames at once."""
    from conftest import random_dit
    from histream_engine import Engine
    from histream_engine.model.vae import to_uint8_frames

    state, path = weights
    decoder = load_taehv(path)
    decoded = []
    real_decode = decoder.decode
    decoder.decode = lambda z, s=None: decoded.append(real_decode(z, s)) or decoded[-1]  # keep the float frames too
    engine = Engine(random_dit("tiny", seed=3, std=0.05), vae=decoder)
    chunks = list(engine.stream(torch.randn(1, 8, engine.dit.config.text_dim), 33, 32, 32, schedule="self_forcing"))
    assert [c.video_frames for c in chunks] == [9, 12, 12] and [c.frames.shape[1] for c in chunks] == [9, 12, 12]
    latents = torch.cat([c.latents for c in chunks], dim=2)  # [1, 16, 9, 4, 4]
    whole = reference_decode(state, latents)
    assert whole.shape[2] == 33 and whole.std() > 0.1
    assert rel_err(torch.cat(decoded, dim=2), whole) < 1e-5
    assert torch.equal(torch.cat([c.frames for c in chunks], dim=1), to_uint8_frames(torch.cat(decoded, dim=2)))
