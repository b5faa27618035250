import pytest
import torch

from conftest import rel_err
from histream_engine import CheckpointError, VAEConfig, WanVAE, load_vae, save_vae, to_uint8_frames
from histream_engine.model.decoder import EncoderNotLoadedError
from histream_engine.model.vae_keys import diffusers_to_wan_vae, wan_to_diffusers_vae

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def vae_pair():
    """diffusers' AutoencoderKLWan with small random weights, and our decoder holding the same ones."""
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLWan(base_dim=8, z_dim=16).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.2)
    ours = WanVAE(VAEConfig(dim=8)).eval()
    mapped = diffusers_to_wan_vae(ref.state_dict())
    ours.load_state_dict({k: v for k, v in mapped.items() if k.startswith(("decoder.", "conv2."))}, strict=True)
    return ref, ours


@pytest.mark.parametrize("frames", [1, 2, 7])
def test_decode_matches_diffusers(vae_pair, frames):
    ref, ours = vae_pair
    latents = torch.randn(2, 16, frames, 4, 6)
    with torch.no_grad():  # diffusers decodes denormalised latents
        want = ref.decode(latents * ours.latents_std + ours.latents_mean, return_dict=False)[0]
    got = ours.decode(latents)
    assert got.shape == (2, 3, 4 * frames - 3, 32, 48)
    assert rel_err(got, want) < 1e-4
    assert got.min() >= -1 and got.max() <= 1


def test_streaming_decode_equals_whole_video(vae_pair):
    _, ours = vae_pair
    latents = torch.randn(1, 16, 7, 4, 6)
    whole = ours.decode(latents)
    state = ours.new_state()
    pieces = [ours.decode(latents[:, :, a:b], state) for a, b in ((0, 3), (3, 4), (4, 7))]  # uneven chunks
    assert [p.shape[2] for p in pieces] == [9, 4, 12]
    assert rel_err(torch.cat(pieces, dim=2), whole) < 1e-5  # frames batched differently: equal up to rounding


def test_key_maps_cover_the_whole_diffusers_vae(vae_pair):
    ref, _ = vae_pair
    full = WanVAE(VAEConfig(dim=8), with_encoder=True)
    assert set(wan_to_diffusers_vae(full.state_dict())) == set(ref.state_dict())
    assert set(diffusers_to_wan_vae(ref.state_dict())) == set(full.state_dict())


def test_loads_a_folder_written_by_diffusers(tmp_path, vae_pair):
    ref, ours = vae_pair
    ref.save_pretrained(tmp_path / "model" / "vae")
    loaded = load_vae(tmp_path / "model")
    latents = torch.randn(1, 16, 2, 4, 6)
    assert torch.equal(loaded.decode(latents), ours.decode(latents))


@pytest.mark.parametrize("fmt", ["wan", "diffusers"])
def test_save_load_round_trip(tmp_path, vae_pair, fmt):
    _, ours = vae_pair
    target = tmp_path / ("Wan2.1_VAE.pth" if fmt == "wan" else "vae")
    save_vae(ours, target, format=fmt)
    loaded = load_vae(target)
    assert loaded.config == ours.config
    latents = torch.randn(1, 16, 3, 4, 6)
    assert torch.equal(loaded.decode(latents), ours.decode(latents))


def test_wan_file_with_encoder_tensors_loads_the_decoder_only(tmp_path, vae_pair):
    _, ours = vae_pair
    state = dict(ours.state_dict())
    state["encoder.conv1.weight"] = torch.zeros(8, 3, 3, 3, 3)
    state["conv1.weight"] = torch.zeros(32, 32, 1, 1, 1)
    torch.save(state, tmp_path / "full.pth")
    assert load_vae(tmp_path / "full.pth").config.dim == 8


def test_uint8_frames():
    video = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1, 1).expand(1, 3, 2, 2, 2)
    frames = to_uint8_frames(video)
    assert frames.shape == (1, 2, 2, 2, 3) and frames.dtype == torch.uint8
    assert frames[0, 0, 0, 0].tolist() == [0, 128, 255]


def test_bad_vae_inputs(tmp_path, vae_pair):
    _, ours = vae_pair
    with pytest.raises(CheckpointError, match="does not exist"):
        load_vae(tmp_path / "missing.pth")
    (tmp_path / "bad.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_vae(tmp_path / "bad.pth")
    state = dict(ours.state_dict())
    state.pop("decoder.head.0.gamma")
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing keys: decoder.head.0.gamma"):
        load_vae(tmp_path / "partial.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_vae(tmp_path / "empty")
    with pytest.raises(ValueError, match="latents must be"):
        ours.decode(torch.randn(1, 15, 1, 4, 4))


def test_encoder_matches_diffusers_and_loads_only_when_asked(tmp_path, vae_pair):
    ref, _ = vae_pair
    ref.save_pretrained(tmp_path / "vae")
    assert not load_vae(tmp_path / "vae").has_encoder
    full = load_vae(tmp_path / "vae", encoder=True)
    video = torch.rand(1, 3, 9, 32, 48) * 2 - 1  # 9 frames -> 3 latent frames
    with torch.no_grad():
        mu = ref.encode(video).latent_dist.mean
    want = (mu - full.latents_mean) / full.latents_std
    got = full.encode(video)
    assert got.shape == (1, 16, 3, 4, 6)
    assert rel_err(got, want) < 1e-4
    save_vae(full, tmp_path / "full.pth")
    assert rel_err(load_vae(tmp_path / "full.pth", encoder=True).encode(video), want) < 1e-4
    with pytest.raises(EncoderNotLoadedError, match=r"load_vae\(path, encoder=True\)"):
        load_vae(tmp_path / "vae").encode(video)
    with pytest.raises(ValueError, match="4k\\+1 .*keep the first 1"):
        full.encode(torch.zeros(1, 3, 4, 32, 48))
    with pytest.raises(ValueError, match="multiples of 8"):
        full.encode(torch.zeros(1, 3, 5, 30, 48))
    save_vae(load_vae(tmp_path / "vae"), tmp_path / "decoder_only.pth")
    with pytest.raises(CheckpointError, match="holds no VAE encoder .*without encoder=True"):
        load_vae(tmp_path / "decoder_only.pth", encoder=True)


@pytest.mark.parametrize("batch,frames,hw", [(1, 1, (16, 8)), (2, 5, (24, 40))])
def test_encoder_matches_diffusers_at_awkward_sizes(tmp_path, vae_pair, batch, frames, hw):
    """An image, and a batch of two 5-frame clips whose latents are 3x5."""
    ref, _ = vae_pair
    ref.save_pretrained(tmp_path / "vae")
    full = load_vae(tmp_path / "vae", encoder=True)
    video = torch.rand(batch, 3, frames, *hw) * 2 - 1
    with torch.no_grad():
        want = (ref.encode(video).latent_dist.mean - full.latents_mean) / full.latents_std
    got = full.encode(video)
    assert got.shape == (batch, 16, (frames - 1) // 4 + 1, hw[0] // 8, hw[1] // 8)
    assert rel_err(got, want) < 1e-4
