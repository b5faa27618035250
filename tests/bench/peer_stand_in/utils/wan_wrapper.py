import torch

from wan.modules.causal_model import CausalWanModel  # noqa: F401  (the real wrapper imports it here too)


class WanTextEncoder(torch.nn.Module):
    def __init__(self):
        raise RuntimeError("loads T5 weights from disk: the harness must pass a text encoder")


class WanVAEWrapper(torch.nn.Module):
    def __init__(self):
        raise RuntimeError("loads VAE weights from disk: the harness must pass a VAE")


class WanDiffusionWrapper(torch.nn.Module):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("loads the DiT from wan_models/: the harness must build the wrapper around its own model")

    def get_scheduler(self):
        return self.scheduler

    def post_init(self):
        self.get_scheduler()

    def forward(self, noisy_image_or_video, conditional_dict, timestep, kv_cache=None, crossattn_cache=None,
                current_start=None, cache_start=None):
        # [B, F, C, H, W] in and out, as the peer's wrapper; the model works on [B, C, F, H, W]
        flow = self.model(noisy_image_or_video.permute(0, 2, 1, 3, 4), t=timestep, context=conditional_dict["prompt_embeds"],
                          seq_len=self.seq_len, kv_cache=kv_cache, crossattn_cache=crossattn_cache,
                          current_start=current_start).permute(0, 2, 1, 3, 4)
        sigma = self.scheduler.sigma_of(timestep.flatten()).reshape(*timestep.shape, 1, 1, 1)
        x0 = (noisy_image_or_video.double() - sigma * flow.double()).to(flow.dtype)
        return flow, x0
