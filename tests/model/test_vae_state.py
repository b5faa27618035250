"""The Wan VAE's saved stream state: the latents of the last decode calls, replayed to rebuild the causal history.

The history after latent frame n reads latent frames n - R + 1 .. n only (R = ``Decoder.reach``, from the architecture),
which an impulse on a float64 twin measures; a state keeping whole calls that hold R latent frames rebuilds it, and
the rest of the stream decodes bit for bit as the uninterrupted one does.
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils.flop_counter import FlopCounterMode

from histream_engine import VAEConfig, WanVAE, flops, to_uint8_frames
from histream_engine.model.decoder import state_nbytes_at
from histream_engine.model.vae import decoder_reach


def through_files(tensors, meta, tmp_path):
    """Through the files a stream state is saved to: safetensors for the tensors, JSON for the rest."""
    save_file(tensors, str(tmp_path / "decoder.safetensors"))
    (tmp_path / "decoder.json").write_text(json.dumps(meta))
    return load_file(str(tmp_path / "decoder.safetensors")), json.loads((tmp_path / "decoder.json").read_text())


def decode_in_calls(vae, latents, sizes, state=None):
    """``latents`` decoded in consecutive calls of ``sizes`` latent frames; the outputs, one per call."""
    state = vae.new_state() if state is None else state
    bounds = [0] + [sum(sizes[: i + 1]) for i in range(len(sizes))]
    return [vae.decode(latents[:, :, a:b], state) for a, b in zip(bounds, bounds[1:])]


def test_the_wan21_vae_reaches_back_38_latent_frames():
    """By hand: 11 convs (conv1, the middle's 4, stage 0's 6) and stage 0's time conv at the latent rate, 2 frames each:
    back 24; stage 1's 6 and its time conv at twice the rate: 7; stages 2 and 3's 12 and the head at 4x: 6.5. 37.5,
    which frame by frame (the upsamplers round down) is 38. The narrow twins below share the layout, hence R."""
    assert decoder_reach(VAEConfig()) == decoder_reach(VAEConfig(dim=2)) == WanVAE(VAEConfig(dim=8)).reach == 38
    assert decoder_reach(VAEConfig(dim=16, num_res_blocks=0)) == 22  # the tiny demo's: 2 + 8 + 4 + 2, 3, 2.5 -> 22


@pytest.mark.parametrize("config", [VAEConfig(dim=2), VAEConfig(dim=2, num_res_blocks=0),
                                    VAEConfig(dim=2, temporal_downsample=(True, True, False))],
                         ids=["wan21-layout", "no-res-blocks", "time-upsampling-later"])
def test_the_reach_is_what_an_impulse_measures(config):
    """A float64 twin decodes latents twice, chunk by chunk, the second time with latent frame p shifted by 1: the
    last latent frame whose 4 output frames change is exactly p + R, and every later one is bit for bit the same."""
    torch.manual_seed(0)
    vae = WanVAE(config).double().eval()
    p, R = 1, vae.reach
    latents = torch.randn(1, 16, p + R + 3, 1, 2, dtype=torch.float64)
    kicked = latents.clone()
    kicked[:, :, p] += 1.0
    sizes = [3] * (latents.shape[2] // 3) + [latents.shape[2] % 3] * (latents.shape[2] % 3 > 0)
    a = torch.cat(decode_in_calls(vae, latents, sizes), dim=2)
    b = torch.cat(decode_in_calls(vae, kicked, sizes), dim=2)
    frames_of = lambda k: slice(4 * k - 3, 4 * k + 1)  # noqa: E731 - latent frame k >= 1
    changed = [k for k in range(1, latents.shape[2]) if not torch.equal(a[:, :, frames_of(k)], b[:, :, frames_of(k)])]
    assert changed == list(range(p, p + R + 1))


# calls of the uninterrupted stream, and where it is cut: before R frames exist (the state replays from the start), at
# exactly R frames (still from the start), where the newest whole calls hold exactly R (a warm replay from frame 3),
# and well after (the newest 13 chunks: 39 frames, from frame 23)
CALLS = [3, 3, 3, 3, 2] + [3] * 18  # 68 latent frames; a 2-frame call so that a cut can keep exactly R = 38
CUTS = {"before-R": (4, 0, 12), "at-R": (13, 0, 38), "exactly-R-kept": (14, 3, 38), "well-after": (21, 23, 39)}


@pytest.fixture(scope="module")
def stream():
    """The dim-8 twin of the Wan2.1 VAE (R = 38), random weights, fp32 on the CPU; random latents; the whole stream
    decoded call by call, its states at the cuts saved through safetensors and JSON."""
    torch.manual_seed(1)
    vae = WanVAE(VAEConfig(dim=8)).eval()
    latents = torch.randn(1, 16, sum(CALLS), 1, 1)
    state, outputs, saved = vae.new_state(), [], {}
    for i, n in enumerate(CALLS):
        start = sum(CALLS[:i])
        outputs.append(vae.decode(latents[:, :, start : start + n], state))
        saved[i + 1] = vae.state_tensors(state)
    return vae, latents, outputs, saved


@pytest.mark.parametrize("cut", list(CUTS))
def test_a_replayed_state_resumes_the_stream_bit_for_bit(stream, cut, tmp_path):
    """Another instance with the same weights loads the state and decodes the next two calls: the uninterrupted
    stream's frames, float and uint8, bit for bit."""
    vae, latents, outputs, saved = stream
    calls, replay_from, kept = CUTS[cut]
    tensors, meta = saved[calls]
    frames = sum(CALLS[:calls])
    assert meta["latent_frames"] == frames and frames - sum(meta["calls"]) == replay_from
    assert tensors["latents"].shape == (1, 16, kept, 1, 1) and torch.equal(tensors["latents"], latents[:, :, replay_from:frames])
    assert meta["calls"] == CALLS[calls - len(meta["calls"]) : calls]
    tensors, meta = through_files(tensors, meta, tmp_path)
    other = WanVAE(VAEConfig(dim=8)).eval()
    other.load_state_dict(vae.state_dict())
    state = other.load_state(tensors, meta)
    assert state.latent_frames == frames and other.state_nbytes(state) == kept * 16 * 4
    got = decode_in_calls(other, latents[:, :, frames:], CALLS[calls : calls + 2], state)
    for g, w in zip(got, outputs[calls : calls + 2]):
        assert torch.equal(g, w)
        assert torch.equal(to_uint8_frames(g), to_uint8_frames(w))


def test_a_state_that_cannot_be_replayed_here_is_refused(stream):
    vae, _, _, saved = stream
    tensors, meta = saved[21]  # 39 latent frames kept after frame 23
    with pytest.raises(ValueError, match="saved by the 'taehv' decoder; this one is 'wan'"):
        vae.load_state(tensors, meta | {"decoder": "taehv"})
    with torch.device("meta"):
        wider = WanVAE(VAEConfig(dim=16))
    with pytest.raises(ValueError, match="another config \\(differing: dim\\)"):
        wider.load_state(tensors, meta)
    with pytest.raises(ValueError, match="not torch.float32"):
        vae.load_state({"latents": tensors["latents"].half()}, meta)
    with pytest.raises(ValueError, match=r"mis-shaped keys: latents: state \(1, 16, 39, 1, 1\) vs expected \(1, 16, 39, 4, 4\)"):
        vae.load_state(tensors, meta | {"latent_shape": [1, 4, 4]})
    with pytest.raises(ValueError, match=r"mis-shaped keys: latents: state \(1, 16, 39, 1, 1\) vs expected \(1, 16, 36, 1, 1\)"):
        vae.load_state(tensors, meta | {"calls": meta["calls"][1:]})
    with pytest.raises(ValueError, match="started: state \\[\\] vs expected"):
        vae.load_state(tensors, meta | {"started": []})
    with pytest.raises(ValueError, match="keeps 36 latent frames after frame 26; rebuilding its history needs the last 38"):
        vae.load_state({"latents": tensors["latents"][:, :, 3:]}, meta | {"calls": meta["calls"][1:]})
    with pytest.raises(ValueError, match=r"bad Wan VAE state: calls \[3, 0\]"):
        vae.load_state(tensors, meta | {"calls": [3, 0]})
    # a state of the causal convs' frames, as states were saved before: its dict has no calls
    old = {k: v for k, v in meta.items() if k != "calls"}
    with pytest.raises(ValueError, match="bad Wan VAE state: calls None .*older histream_engine"):
        vae.load_state({"decoder.head.2": torch.zeros(1, 8, 2, 8, 8)}, old)
    short = vae.new_state()
    vae.decode(torch.randn(1, 16, 2, 1, 1), short)
    with pytest.raises(ValueError, match="another WanVAE instance"):
        WanVAE(VAEConfig(dim=8)).state_tensors(short)
    fresh = vae.load_state(*vae.state_tensors(vae.new_state()))  # a state before any frame
    assert fresh.latent_frames == 0 and not fresh.calls and vae.state_tensors(fresh)[0] == {}


@pytest.mark.parametrize("frames", [1, 5, 22, 24, 26])  # before R; R; the newest 8 calls (24); 23 frames from frame 3
def test_the_accounting_is_a_chunked_streams_state(frames):
    """``state_shapes`` assumes a stream's calls, a chunk of 3 at a time: a real state after those calls has them."""
    torch.manual_seed(0)
    vae = WanVAE(VAEConfig(dim=8, num_res_blocks=0)).eval()  # R = 22: the same rule, fewer frames to decode
    state = vae.new_state()
    sizes = [3] * (frames // 3) + [frames % 3] * (frames % 3 > 0)
    decode_in_calls(vae, torch.randn(2, 16, frames, 1, 2), sizes, state)
    tensors = vae.state_tensors(state)[0]
    assert vae.state_shapes(2, 1, 2, frames) == {k: tuple(v.shape) for k, v in tensors.items()}
    assert state_nbytes_at(vae, 2, 1, 2, frames) == vae.state_nbytes(state) > 0
    steady = vae.state_shapes(2, 1, 2)["latents"][2]
    assert vae.steady_latent_frames == steady == 24 and vae.state_shapes(2, 1, 2, 3000)["latents"][2] == steady


def test_state_bytes_of_the_wan21_vae():
    """Saved: 39 latent frames of 16 channels (the newest 13 chunks, 38 frames and the rest of the oldest chunk).
    Held while decoding, and saved before the replay: every causal conv of the decoder carries 2 frames of its input.
    Counted from the architecture: at the latent size, conv1 (16 channels), the middle's 4 convs and stage 0's 6 (4d)
    and its time conv (4d); at 4x the area, stage 1's first conv (2d, the upsampler halved it), its 5 others and its
    time conv (4d); at 16x, stage 2's 6 (2d); at 64x, stage 3's 6 and the head (d)."""
    d = VAEConfig().dim
    per_latent_pixel = (16 + 11 * 4 * d) + 4 * (2 * d + 6 * 4 * d) + 16 * (6 * 2 * d) + 64 * (7 * d)
    with torch.device("meta"):
        vae = WanVAE()
    for h, w in ((60, 104), (136, 240)):  # 480x832 and 1920x1088
        assert state_nbytes_at(vae, 1, h, w, dtype=torch.bfloat16) == 39 * 16 * h * w * 2
        assert 2 * sum(math.prod(s) for s in vae.cache_shapes(1, h, w).values()) == 2 * per_latent_pixel * h * w * 2


def test_the_replays_flops_are_what_load_state_does():
    """``flops.vae_replay_flops`` (39 steady latent frames) against a count of a real ``load_state`` on meta tensors."""
    h, w, config = 64, 96, VAEConfig(dim=8)  # the Wan2.1 VAE's layout, R = 38
    with torch.device("meta"):
        vae = WanVAE(config)
    state = vae.new_state()
    decode_in_calls(vae, torch.empty(1, 16, 45, h // 8, w // 8, device="meta"), [3] * 15, state)
    tensors, meta = vae.state_tensors(state)
    with FlopCounterMode(display=False) as counter:
        vae.load_state(tensors, meta)
    per_frame = flops.vae_flops_per_frame(h, w, config)
    assert counter.get_total_flops() == flops.vae_replay_flops(h, w, config) == 39 * 4 * per_frame
