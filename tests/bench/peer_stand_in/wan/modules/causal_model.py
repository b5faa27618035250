import torch

from histream_engine import WanConfig, WanDiT
from wan.modules.attention import attention  # noqa: F401  (the harness replaces this name)


class CausalWanModel(WanDiT):
    """Causal sampling by recomputation: the clean frames written by each context pass (t = 0) are kept, and every
    call runs the block-causal whole-sequence reference over [clean history, current chunk]."""

    def __init__(self, model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=2048, ffn_dim=8192, freq_dim=256,
                 text_dim=4096, out_dim=16, num_heads=16, num_layers=32, local_attn_size=-1, sink_size=0, qk_norm=True,
                 cross_attn_norm=True, eps=1e-6):
        super().__init__(WanConfig(dim=dim, ffn_dim=ffn_dim, num_heads=num_heads, num_layers=num_layers, in_dim=in_dim,
                                   out_dim=out_dim, patch_size=tuple(patch_size), freq_dim=freq_dim, text_dim=text_dim,
                                   text_len=text_len, eps=eps, qk_norm=qk_norm, cross_attn_norm=cross_attn_norm))
        self.chunk = 3

    def forward(self, x, t, context, seq_len, kv_cache=None, crossattn_cache=None, current_start=0):
        history = kv_cache[0].setdefault("clean", [])  # [B, C, M, H, W] per written chunk
        B = x.shape[0]
        past = torch.cat(history, dim=2) if history else x[:, :, :0]
        frames = torch.cat([past, x], dim=2)
        t_all = torch.cat([torch.zeros(B, past.shape[2], dtype=torch.float32), t.float()], dim=1)
        flow = super().forward(frames, t_all, context, block_causal=self.chunk)[:, :, past.shape[2]:]
        if bool((t == 0).all()):
            history.append(x.clone())
        return flow
