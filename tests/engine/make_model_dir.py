"""ctest fixture (host.model_dir): DIR/model, a tiny model in Wan's folder layout; DIR/prompt.safetensors, prompt
embeddings for it; DIR/corrupt.pt, a corrupt checkpoint. For Engine::open. Usage: python make_model_dir.py DIR"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from histream_engine import WanDiT, save_dit
from histream_engine.model.vae import VAEConfig, WanVAE
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
print(f"wrote a tiny Wan folder, prompt embeddings and a corrupt checkpoint to {root}")
