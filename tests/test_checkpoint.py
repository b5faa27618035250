import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import random_dit
from histream_engine import CheckpointError, WanConfig, load_dit, save_dit
from histream_engine.checkpoint import infer_config


def _probe(dit):
    torch.manual_seed(9)
    x = torch.randn(1, 16, 3, 4, 6)
    ctx = torch.randn(1, 5, dit.config.text_dim)
    return dit(x, torch.tensor([[900.0, 400.0, 0.0]]), ctx)


@pytest.mark.parametrize("fmt, shard", [("wan", None), ("diffusers", None), ("diffusers", 20_000), ("self_forcing", None)])
def test_formats_round_trip_to_identical_outputs(tmp_path, tiny_dit, fmt, shard):
    target = tmp_path / ("ckpt.pt" if fmt == "self_forcing" else "ckpt")
    save_dit(tiny_dit, target, format=fmt, max_shard_bytes=shard)
    if shard:
        assert len(list(target.glob("*.safetensors"))) > 1
    config = "tiny" if fmt == "self_forcing" else None  # a .pt carries no config
    loaded = load_dit(target, dtype=torch.float32, config=config)
    assert loaded.config == tiny_dit.config
    for k, v in tiny_dit.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert torch.equal(_probe(loaded), _probe(tiny_dit))


def test_diffusers_model_folder_with_transformer_subfolder(tmp_path, tiny_dit):
    save_dit(tiny_dit, tmp_path / "model" / "transformer", format="diffusers")
    assert torch.equal(_probe(load_dit(tmp_path / "model", dtype=torch.float32)), _probe(tiny_dit))


def test_qk_norm_off_round_trips(tmp_path):
    cfg = WanConfig.from_name("tiny").replace(qk_norm=False)
    dit = random_dit(cfg)
    save_dit(dit, tmp_path / "w", format="wan")
    loaded = load_dit(tmp_path / "w", dtype=torch.float32)
    assert loaded.config.qk_norm is False
    assert torch.equal(_probe(loaded), _probe(dit))


def test_self_forcing_prefers_ema_and_strips_wrappers(tmp_path):
    ema, raw = random_dit("tiny", seed=1), random_dit("tiny", seed=2)

    def wrapped(dit):
        return {f"model._fsdp_wrapped_module._orig_mod.{k}": v for k, v in dit.state_dict().items()}

    path = tmp_path / "sf.pt"
    torch.save({"generator": wrapped(raw), "generator_ema": wrapped(ema), "step": torch.tensor(7)}, path)
    loaded = load_dit(path, dtype=torch.float32, config="tiny")
    assert torch.equal(_probe(loaded), _probe(ema))
    torch.save({"generator": wrapped(raw)}, path)
    assert torch.equal(_probe(load_dit(path, dtype=torch.float32, config="tiny")), _probe(raw))


def test_config_inferred_from_shapes(tmp_path):
    cfg = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=3, text_dim=16, freq_dim=32, cross_attn_norm=False)
    dit = random_dit(cfg)
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(tmp_path / "bare.safetensors"))
    inferred = infer_config(dit.state_dict())
    assert inferred == cfg
    assert load_dit(tmp_path / "bare.safetensors", dtype=torch.float32).config == cfg


def test_head_count_not_inferable_says_pass_config(tmp_path, tiny_dit):
    save_dit(tiny_dit, tmp_path / "sf.pt", format="self_forcing")
    with pytest.raises(CheckpointError, match="pass config="):
        load_dit(tmp_path / "sf.pt")


def test_dtype_and_device(tmp_path, tiny_dit):
    save_dit(tiny_dit, tmp_path / "w")
    dit = load_dit(tmp_path / "w", dtype=torch.bfloat16)
    assert dit.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    assert dit.blocks[0].modulation.dtype == torch.float32
    assert not any(p.requires_grad for p in dit.parameters())
    with pytest.raises(ValueError, match="unsupported dtype"):
        load_dit(tmp_path / "w", dtype=torch.int8)


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, tiny_dit):
    sd = {k: v.contiguous() for k, v in tiny_dit.state_dict().items()}
    sd.pop("blocks.1.ffn.2.bias")
    sd["blocks.0.extra.weight"] = torch.zeros(2)
    sd["head.head.weight"] = torch.zeros(3, 3)
    folder = tmp_path / "bad"
    folder.mkdir()
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(tiny_dit.config.to_wan_json()))
    with pytest.raises(CheckpointError) as err:
        load_dit(folder)
    msg = str(err.value)
    assert "missing keys: blocks.1.ffn.2.bias" in msg
    assert "unexpected keys: blocks.0.extra.weight" in msg
    assert "head.head.weight: checkpoint (3, 3)" in msg


def test_corrupt_and_missing_files(tmp_path):
    bad_st = tmp_path / "x.safetensors"
    bad_st.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_dit(bad_st)
    bad_pt = tmp_path / "x.pt"
    bad_pt.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_dit(bad_pt)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_dit(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no DiT weights"):
        load_dit(tmp_path / "empty")
    (tmp_path / "weird.txt").write_text("x")
    with pytest.raises(CheckpointError, match="unrecognised"):
        load_dit(tmp_path / "weird.txt")


def test_pickled_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    path = tmp_path / "evil.pt"
    torch.save({"generator": Payload()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_dit(path, config="tiny")


def test_save_rejects_unknown_format(tmp_path, tiny_dit):
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        save_dit(tiny_dit, tmp_path / "x", format="onnx")
