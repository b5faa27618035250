import pytest
import torch

from conftest import rel_err
from histream_engine import CheckpointError
from histream_engine.text_encoder import load_prompt_embeds, load_text_encoder, transformers_to_wan_t5

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def umt5():
    torch.manual_seed(0)
    cfg = transformers.UMT5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                  relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", dropout_rate=0.0)
    model = transformers.UMT5EncoderModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate("a cat on the moon red fox jumps".split())}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    path = tmp_path_factory.mktemp("tok")
    fast.save_pretrained(path)
    return path


def test_wan_file_matches_transformers_and_zero_pads(tmp_path, umt5, tokenizer_dir):
    torch.save(transformers_to_wan_t5(umt5.state_dict()), tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    enc = load_text_encoder(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", tokenizer_dir, dtype=torch.float32)
    out = enc.encode(["a red fox jumps", "the   cat"])
    assert out.shape == (2, 512, 32)
    ids = torch.tensor([[3, 8, 9, 10, 1], [6, 4, 1, 0, 0]])  # the same tokens, by hand
    mask = (torch.arange(5) < torch.tensor([[5], [3]])).long()
    with torch.no_grad():
        want = umt5(input_ids=ids, attention_mask=mask).last_hidden_state
    assert rel_err(out[0, :5], want[0]) < 1e-6
    assert rel_err(out[1, :3], want[1, :3]) < 1e-6
    assert out[0, 5:].abs().max() == 0 and out[1, 3:].abs().max() == 0


def test_hf_folder_loads(tmp_path, umt5):
    umt5.save_pretrained(tmp_path / "text_encoder")
    enc = load_text_encoder(tmp_path / "text_encoder", dtype=torch.float32)
    ids, mask = torch.tensor([[3, 4, 1]]), torch.ones(1, 3, dtype=torch.long)
    with torch.no_grad():
        assert rel_err(enc.encode_ids(ids, mask), umt5(input_ids=ids, attention_mask=mask).last_hidden_state) < 1e-6
    with pytest.raises(RuntimeError, match="no tokenizer"):
        enc.encode("a cat")
    enc.free()
    assert enc.model is None


def test_bad_text_encoder_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_text_encoder(tmp_path / "nope.pth")
    torch.save({"something.weight": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="not a Wan T5"):
        load_text_encoder(tmp_path / "x.pth")


def test_prompt_embeds_files(tmp_path):
    from safetensors.torch import save_file

    emb = torch.randn(512, 16)
    save_file({"context": emb}, str(tmp_path / "p.safetensors"))
    torch.save(emb, tmp_path / "p.pt")
    for name in ("p.safetensors", "p.pt"):
        assert torch.equal(load_prompt_embeds(tmp_path / name, text_dim=16), emb[None])
    with pytest.raises(CheckpointError, match="expected"):
        load_prompt_embeds(tmp_path / "p.pt", text_dim=32)
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_prompt_embeds(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_prompt_embeds(tmp_path / "none.safetensors")
