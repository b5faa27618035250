"""ctest fixture (host.model_dir): DIR/model, a tiny model in Wan's folder layout; DIR/prompt.safetensors, prompt
embeddings for it; DIR/corrupt.pt, a corrupt checkpoint; DIR/taew2_1.pth, a random TAEHV in taew2_1's published
layout (a third of its width); DIR/tae_chunk0.rgb, the first chunk that folder decodes with it, as the Python half
computes it, for Engine::open with EngineOptions::tae_path to match. Usage: python make_model_dir.py DIR"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from histream_engine import WanDiT, host, save_dit
from histream_engine.model.taehv import TAEHV, TAEHVConfig
from histream_engine.model.vae import VAEConfig, WanVAE
from histream_engine.taehv_checkpoint import save_taehv
from histream_engine.vae_checkpoint import save_vae

root = Path(sys.argv[1])
torch.manual_seed(0)
dit = WanDiT("tiny").eval()
save_dit(dit, root / "model", format="wan")
save_vae(WanVAE(VAEConfig(dim=16, num_res_blocks=0)).eval(), root / "model" / "vae", format="diffusers")  # its config travels
prompt = torch.zeros(dit.config.text_len, dit.config.text_dim)  # [512, text_dim]
prompt[:8] = torch.randn(8, dit.config.text_dim)
save_file({"prompt_embeds": prompt}, str(root / "prompt.safetensors"))
(root / "corrupt.pt").write_bytes(b"not a checkpoint")
tae = TAEHV(TAEHVConfig(channels=(24, 16, 8, 8))).eval()
# torch's default init decodes every pixel to black; conv weights ~ 1/sqrt(fan_in) (as tests/model/test_taehv.py's) and
# the RGB conv's bias at 0.5, the middle of TAEHV's [0, 1], give frames that use the whole byte range
with torch.no_grad():
    for name, p in tae.named_parameters():
        if p.dim() == 4:
            p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
        else:
            p.copy_(0.1 * torch.randn_like(p) + (0.5 if name == "decoder.22.bias" else 0.0))
save_taehv(tae, root / "taew2_1.pth")

# the request host_tests.cpp's tae_decoder case makes: small() there, 33 frames at 64x96, histream_plus, seed 0
engine = host.open_engine(host.EngineOptions(str(root / "model"), dtype="float32", device="cpu", text_encoder=False,
                                             tae_path=str(root / "taew2_1.pth")))
stream = engine.open(host.HostRequest("", str(root / "prompt.safetensors"), 33, 64, 96, "histream_plus", 0))
frames = stream.next_chunk()[1]  # [9, 64, 96, 3] uint8
stream.close()
(root / "tae_chunk0.rgb").write_bytes(frames.tobytes())
print(f"wrote a tiny Wan folder, prompt embeddings, a corrupt checkpoint, a random taew2_1.pth and its first chunk "
      f"({frames.shape[0]} frames, bytes {frames.min()}..{frames.max()}) to {root}")
