import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from conftest import rel_err
from histream_engine import CheckpointError, load_vae
from histream_engine.model.decoder import EncoderNotLoadedError, VideoDecoder, state_nbytes_at
from histream_engine.model.taehv import TAEHV, TAEHVConfig
from histream_engine.taehv_checkpoint import load_taehv, save_taehv

# the published layout at a third of the decoder's width and a quarter of the encoder's: seconds, not minutes
SMALL = TAEHVConfig(channels=(24, 16, 8, 8), encoder_channels=16)


def memblocks(keys: dict, prefix: str, blocks, c: int) -> dict:
    for b in blocks:
        keys |= {f"{prefix}.{b}.conv.0.weight": (c, 2 * c, 3, 3), f"{prefix}.{b}.conv.0.bias": (c,)}
        for i in (2, 4):
            keys |= {f"{prefix}.{b}.conv.{i}.weight": (c, c, 3, 3), f"{prefix}.{b}.conv.{i}.bias": (c,)}
    return keys


def published_keys(config: TAEHVConfig = TAEHVConfig()) -> dict[str, tuple[int, ...]]:
    """taew2_1's tensors, written out from the published ``nn.Sequential``s: the decoder's 64 and the encoder's 64
    (conv 3->E and ReLU; then per stage a TPool of stride 2, 2, 1, a stride-2 conv, 3 MemBlocks; conv E->16)."""
    c0, c1, c2, c3 = config.channels
    z, e = config.latent_channels, config.encoder_channels
    keys = {"decoder.1.weight": (c0, z, 3, 3), "decoder.1.bias": (c0,)}
    for blocks, c in (((3, 4, 5), c0), ((9, 10, 11), c1), ((15, 16, 17), c2)):
        memblocks(keys, "decoder", blocks, c)
    keys |= {"decoder.7.conv.weight": (c0, c0, 1, 1), "decoder.8.weight": (c1, c0, 3, 3),
             "decoder.13.conv.weight": (2 * c1, c1, 1, 1), "decoder.14.weight": (c2, c1, 3, 3),
             "decoder.19.conv.weight": (2 * c2, c2, 1, 1), "decoder.20.weight": (c3, c2, 3, 3),
             "decoder.22.weight": (3, c3, 3, 3), "decoder.22.bias": (3,)}
    encoder = {"encoder.0.weight": (e, 3, 3, 3), "encoder.0.bias": (e,), "encoder.17.weight": (z, e, 3, 3),
               "encoder.17.bias": (z,)}
    for pool, stride, blocks in ((2, 2, (4, 5, 6)), (7, 2, (9, 10, 11)), (12, 1, (14, 15, 16))):
        encoder |= {f"encoder.{pool}.conv.weight": (e, stride * e, 1, 1), f"encoder.{pool + 1}.weight": (e, e, 3, 3)}
        memblocks(encoder, "encoder", blocks, e)
    return keys | encoder


def random_state(config: TAEHVConfig = SMALL, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in published_keys(config).items():
        fan_in = shape[1] * shape[2] * shape[3] if len(shape) == 4 else 1
        state[k] = torch.randn(shape, generator=g) * (1.0 / fan_in**0.5 if len(shape) == 4 else 0.1)
    return state


def reference_conv(state: dict, x: torch.Tensor, key: str, stride: int = 1) -> torch.Tensor:
    w = state[key + ".weight"]
    return F.conv2d(x, w, state.get(key + ".bias"), stride=stride, padding=w.shape[-1] // 2)


def reference_memblock(state: dict, x: torch.Tensor, key: str, N: int) -> torch.Tensor:
    """Batch-major frames ``[N * T, C, H, W]``; the memory is the block's input one frame earlier (zeros first)."""
    conv = lambda x, k: reference_conv(state, x, k)
    frames = x.reshape(N, x.shape[0] // N, *x.shape[1:])
    past = torch.cat([torch.zeros_like(frames[:, :1]), frames[:, :-1]], dim=1).reshape(x.shape)
    h = F.relu(conv(torch.cat([x, past], dim=1), f"{key}.conv.0"))
    h = conv(F.relu(conv(h, f"{key}.conv.2")), f"{key}.conv.4")
    return F.relu(h + x)


def reference_decode(state: dict, latents: torch.Tensor) -> torch.Tensor:
    """The published decoder, whole video at once, in its own conventions: NTCHW, batch-major frames, memory as the
    previous frame's input (zeros first), TGrow as a reshape, the first 3 frames trimmed at the end, [0, 1]."""
    conv = lambda x, k: reference_conv(state, x, k)
    x = latents.permute(0, 2, 1, 3, 4)  # NCTHW -> NTCHW
    N, T = x.shape[:2]
    x = x.reshape(N * T, *x.shape[2:])
    x = F.relu(conv(torch.tanh(x / 3) * 3, "decoder.1"))
    for blocks, grow, out in (((3, 4, 5), 7, 8), ((9, 10, 11), 13, 14), ((15, 16, 17), 19, 20)):
        for b in blocks:
            x = reference_memblock(state, x, f"decoder.{b}", N)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        y = conv(x, f"decoder.{grow}.conv")
        x = y.reshape(-1, x.shape[1], *x.shape[2:])  # each frame's channel groups become consecutive frames
        x = conv(x, f"decoder.{out}")
    x = conv(F.relu(x), "decoder.22").clamp(0, 1)
    video = x.reshape(N, -1, *x.shape[1:])[:, 3:]  # NTCHW in [0, 1], first frames trimmed
    return video.permute(0, 2, 1, 3, 4) * 2 - 1


def reference_encode(state: dict, video: torch.Tensor) -> torch.Tensor:
    """The published encoder, whole video at once, in its own conventions: NTCHW in [0, 1], the end padded with the
    last frame to whole groups of 4, batch-major frames, TPool as a reshape (a frame group's channels side by side),
    memory as the previous frame's input (zeros first), stride-2 convs padded by 1, no clamp."""
    x = (video.permute(0, 2, 1, 3, 4) + 1) / 2  # NCTHW in [-1, 1] -> NTCHW in [0, 1]
    x = torch.cat([x, x[:, -1:].repeat(1, -x.shape[1] % 4, 1, 1, 1)], dim=1)
    N = x.shape[0]
    x = F.relu(reference_conv(state, x.reshape(-1, *x.shape[2:]), "encoder.0"))
    for pool, blocks in ((2, (4, 5, 6)), (7, (9, 10, 11)), (12, (14, 15, 16))):
        w = state[f"encoder.{pool}.conv.weight"]  # [C, stride * C, 1, 1]
        x = F.conv2d(x.reshape(-1, w.shape[1], *x.shape[2:]), w)
        x = reference_conv(state, x, f"encoder.{pool + 1}", stride=2)
        for b in blocks:
            x = reference_memblock(state, x, f"encoder.{b}", N)
    x = reference_conv(state, x, "encoder.17")
    return x.reshape(N, -1, *x.shape[1:]).permute(0, 2, 1, 3, 4)  # [N, 16, T / 4, H / 8, W / 8]


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
    """Names and shapes of the full-size model, as the real taew2_1 holds them: the decoder alone by default."""
    want = published_keys()
    with torch.device("meta"):
        decoder = {k: tuple(v.shape) for k, v in TAEHV().state_dict().items()}
        both = {k: tuple(v.shape) for k, v in TAEHV(with_encoder=True).state_dict().items()}
    assert len(want) == 128 and both == want
    assert decoder == {k: v for k, v in want.items() if k.startswith("decoder.")} and len(decoder) == 64


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
    model = load_taehv(path, encoder=True)
    save_taehv(model, tmp_path / "safetensors" / "taew2_1.safetensors")
    again = load_vae(tmp_path / "safetensors" / "taew2_1.safetensors", encoder=True)
    assert again.config == SMALL and again.has_encoder
    latents = torch.randn(1, 16, 2, 3, 3)
    assert torch.equal(again.decode(latents), model.decode(latents))
    video = torch.rand(1, 3, 5, 16, 8) * 2 - 1
    assert torch.equal(again.encode(video), model.encode(video))
    decoder_only = load_vae(tmp_path / "safetensors" / "taew2_1.safetensors")
    assert not decoder_only.has_encoder and decoder_only.config.channels == SMALL.channels
    assert torch.equal(decoder_only.decode(latents), model.decode(latents))


@pytest.mark.parametrize("batch,frames,hw", [(1, 1, (8, 16)), (2, 5, (24, 40)), (1, 13, (40, 8))])
def test_encoder_matches_the_reference(weights, batch, frames, hw):
    """An image, and clips of 5 and 13 frames (padded to 8 and 16: the last group is mostly copies), at sizes whose
    latents are 1, 3 and 5 wide: k+1 latent frames for 4k+1 frames, as the Wan VAE's encoder gives."""
    state, path = weights
    model = load_taehv(path, encoder=True)
    assert model.has_encoder and isinstance(model, VideoDecoder)
    video = torch.rand(batch, 3, frames, *hw) * 2 - 1
    got = model.encode(video)
    assert got.shape == (batch, 16, (frames - 1) // 4 + 1, hw[0] // 8, hw[1] // 8)
    want = reference_encode(state, video)
    assert got.shape == want.shape and rel_err(got, want) < 1e-5 and want.std() > 0.05


def test_encoder_sees_time_in_order(weights):
    """The first latent frame depends on frames 0..3 only (causal, groups of 4), so changing frame 4 changes latent
    frame 1 and leaves latent 0 alone; frame 0 alone (an image) gives latent 0 of the 1-frame video."""
    _, path = weights
    model = load_taehv(path, encoder=True)
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    z = model.encode(video)
    changed = video.clone()
    changed[:, :, 4] = -changed[:, :, 4]
    z2 = model.encode(changed)
    assert torch.equal(z2[:, :, 0], z[:, :, 0]) and rel_err(z2[:, :, 1], z[:, :, 1]) > 1e-2
    image = video[:, :, :1]  # padded with 3 copies of itself
    assert rel_err(model.encode(image)[:, :, 0], reference_encode(dict(model.state_dict()), image)[:, :, 0]) < 1e-5


def test_encode_then_decode_round_trips_the_shapes(weights):
    _, path = weights
    model = load_taehv(path, encoder=True)
    video = torch.rand(2, 3, 9, 24, 16) * 2 - 1
    latents = model.encode(video)
    assert latents.shape == (2, 16, 3, 3, 2)
    again = model.decode(latents)
    assert again.shape == video.shape and torch.isfinite(again).all() and again.abs().max() <= 1


def test_encoder_loading_and_refusals(tmp_path, weights):
    state, path = weights
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with pytest.raises(EncoderNotLoadedError, match=r"load_taehv\(path, encoder=True\)"):
        load_taehv(path).encode(video)
    with pytest.raises(EncoderNotLoadedError, match=r"load_taehv\(path, encoder=True\)"):
        load_vae(path).encode(video)
    assert load_vae(path, encoder=True).has_encoder
    decoder_only = {k: v for k, v in state.items() if k.startswith("decoder.")}
    torch.save(decoder_only, tmp_path / "decoder_only.pth")
    assert not load_taehv(tmp_path / "decoder_only.pth").has_encoder
    with pytest.raises(CheckpointError, match="holds no TAEHV encoder"):
        load_taehv(tmp_path / "decoder_only.pth", encoder=True)
    partial = dict(state)
    partial.pop("encoder.15.conv.4.bias")
    torch.save(partial, tmp_path / "partial.pth")
    assert load_taehv(tmp_path / "partial.pth").has_encoder is False  # the decoder alone still loads
    with pytest.raises(CheckpointError, match=r"missing keys: encoder\.15\.conv\.4\.bias"):
        load_taehv(tmp_path / "partial.pth", encoder=True)
    wrong = dict(state)
    wrong["encoder.13.weight"] = torch.zeros(16, 16, 1, 1)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: encoder\.13\.weight: checkpoint \(16, 16, 1, 1\)"):
        load_taehv(tmp_path / "wrong.pth", encoder=True)
    patchified = dict(state)
    patchified["encoder.0.weight"] = torch.zeros(16, 12, 3, 3)
    torch.save(patchified, tmp_path / "taehv1_5.pth")
    with pytest.raises(CheckpointError, match="use taew2_1.pth"):
        load_taehv(tmp_path / "taehv1_5.pth", encoder=True)
    model = load_taehv(path, encoder=True)
    with pytest.raises(ValueError, match="4k\\+1 .*keep the first 5"):
        model.encode(torch.zeros(1, 3, 8, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8: crop or resize it, e.g. to 16x8"):
        model.encode(torch.zeros(1, 3, 5, 12, 20))
    with pytest.raises(ValueError, match="RGB in \\[-1, 1\\]"):
        model.encode(torch.zeros(1, 4, 5, 16, 16))


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


def save_and_load_state(decoder, state, tmp_path):
    """Through the files a stream state is saved to: safetensors for the tensors, JSON for the rest."""
    tensors, meta = decoder.state_tensors(state)
    save_file(tensors, str(tmp_path / "decoder.safetensors"))
    (tmp_path / "decoder.json").write_text(json.dumps(meta))
    return load_file(str(tmp_path / "decoder.safetensors")), json.loads((tmp_path / "decoder.json").read_text())


def test_a_saved_state_resumes_the_stream_exactly(tmp_path, weights):
    """Two pieces with the state saved to disk and loaded into another instance between them: the frames the
    uninterrupted decode gives, bit for bit on the CPU (each frame's convs are its own), and the reference's."""
    state, path = weights
    model, resumed = load_taehv(path), load_taehv(path, encoder=True)  # with or without the encoder: the same decoder
    latents = torch.randn(2, 16, 7, 3, 5)
    whole = model.decode(latents)
    first = model.new_state()
    head = model.decode(latents[:, :, :4], first)
    tensors, meta = save_and_load_state(model, first, tmp_path)
    assert sorted(tensors) == sorted(f"decoder.{i}" for i in (3, 4, 5, 9, 10, 11, 15, 16, 17))
    assert meta["latent_frames"] == 4 and meta["latent_shape"] == [2, 3, 5]
    carried = resumed.load_state(tensors, meta)
    tail = resumed.decode(latents[:, :, 4:], carried)
    assert torch.equal(torch.cat([head, tail], dim=2), whole) and carried.latent_frames == 7
    assert rel_err(whole, reference_decode(state, latents)) < 1e-5
    fresh = resumed.load_state(*save_and_load_state(model, model.new_state(), tmp_path))  # a state before any frame
    assert fresh.latent_frames == 0 and torch.equal(resumed.decode(latents, fresh), whole)


def test_a_state_from_another_decoder_or_size_is_refused(tmp_path, weights):
    _, path = weights
    model = load_taehv(path)
    state = model.new_state()
    model.decode(torch.randn(1, 16, 2, 3, 5), state)
    tensors, meta = save_and_load_state(model, state, tmp_path)
    with pytest.raises(ValueError, match="saved by the 'wan' decoder; this one is 'taehv'"):
        model.load_state(tensors, meta | {"decoder": "wan"})
    with torch.device("meta"):
        wider = TAEHV(TAEHVConfig(channels=(32, 16, 8, 8)))
    with pytest.raises(ValueError, match="another config \\(differing: channels\\)"):
        wider.load_state(tensors, meta)
    with pytest.raises(ValueError, match=r"mis-shaped keys: decoder\.10: state \(1, 16, 6, 10\) vs expected \(1, 16, 8, 8\)"):
        model.load_state(tensors, meta | {"latent_shape": [1, 4, 4]})
    with pytest.raises(ValueError, match=r"missing keys: decoder\.16"):
        model.load_state({k: v for k, v in tensors.items() if k != "decoder.16"}, meta)
    with pytest.raises(ValueError, match=r"unexpected keys: decoder\.99"):
        model.load_state(tensors | {"decoder.99": torch.zeros(1)}, meta)
    with pytest.raises(ValueError, match="not torch.float32 .*load the decoder in the dtype"):
        model.load_state({k: v.double() for k, v in tensors.items()}, meta)
    with pytest.raises(ValueError, match="latent_shape"):
        model.load_state(tensors, meta | {"latent_shape": None})
    with pytest.raises(ValueError, match="not a decoder state"):
        model.load_state(tensors, {"latent_frames": 2})
    carried = model.load_state(tensors, meta)
    with pytest.raises(ValueError, match=r"continues latents \[1, 16, F, 3, 5\].*new state"):
        model.decode(torch.randn(1, 16, 1, 4, 5), carried)


@pytest.mark.parametrize("frames", [1, 2, 5])
def test_state_accounting_matches_a_real_state(weights, frames):
    _, path = weights
    model = load_taehv(path)
    state = model.new_state()
    model.decode(torch.randn(2, 16, frames, 3, 5), state)
    assert model.state_shapes(2, 3, 5, frames) == {k: tuple(v.shape) for k, v in model.state_tensors(state)[0].items()}
    assert state_nbytes_at(model, 2, 3, 5, frames) == model.state_nbytes(state) > 0


def test_state_bytes_of_taew2_1_from_its_layout():
    """taew2_1 carries, per MemBlock, one frame of its width at its stage's size: 3 blocks each of 256 channels at
    the latent size, 128 at twice it and 64 at 4 times it (5376 values per latent pixel), in the decoder's dtype."""
    with torch.device("meta"):
        model = TAEHV()
    for h, w in ((60, 104), (136, 240)):  # 480x832 and 1920x1088
        assert state_nbytes_at(model, 1, h, w, dtype=torch.bfloat16) == 3 * (256 + 128 * 4 + 64 * 16) * h * w * 2


def test_tpool_keeps_channels_last_and_the_frame_order():
    """On a GPU frames are channels-last; TPool's grouping must give the same frames in either layout, and put the
    earlier frame's channels first, as the published reshape of batch-major frames does."""
    from histream_engine.model.taehv import TPool

    pool = TPool(5, 2)
    x = torch.randn(4 * 3, 5, 4, 6)  # [T * B, C, H, W], T = 4, B = 3
    with torch.no_grad():
        plain = pool(x, batch=3)
        last = pool(x.contiguous(memory_format=torch.channels_last), batch=3)
        frames = x.view(4, 3, 5, 4, 6).transpose(0, 1).reshape(3 * 2, 10, 4, 6)  # batch-major, pairs side by side
        want = pool.conv(frames).view(3, 2, 5, 4, 6).transpose(0, 1).reshape(6, 5, 4, 6)  # back to time-major
    assert plain.shape == (2 * 3, 5, 4, 6) and rel_err(plain, want) < 1e-6 and rel_err(last, plain) < 1e-6
