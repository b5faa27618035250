import torch

from demo_utils.memory import gpu, get_cuda_free_memory_gb, DynamicSwapInstaller, move_model_to_device_with_memory_preservation  # noqa: F401
from utils.wan_wrapper import WanDiffusionWrapper, WanTextEncoder, WanVAEWrapper


class CausalInferencePipeline(torch.nn.Module):
    def __init__(self, args, device, generator=None, text_encoder=None, vae=None):
        super().__init__()
        self.generator = WanDiffusionWrapper() if generator is None else generator
        self.text_encoder = WanTextEncoder() if text_encoder is None else text_encoder
        self.vae = WanVAEWrapper() if vae is None else vae
        self.scheduler = self.generator.get_scheduler()
        steps = torch.tensor(args.denoising_step_list, dtype=torch.long)
        if args.warp_denoising_step:
            steps = torch.cat((self.scheduler.timesteps, torch.tensor([0.0])))[1000 - steps]
        self.denoising_step_list = steps
        self.num_transformer_blocks = 30  # the 1.3B constants the harness must replace
        self.frame_seq_length = 1560
        self.kv_cache1 = None
        self.args = args
        self.num_frame_per_block = args.num_frame_per_block
        print(f"KV inference with {self.num_frame_per_block} frames per block")

    def _initialize_kv_cache(self, batch_size, dtype, device):
        self.kv_cache1 = [{"k": torch.zeros([batch_size, 32760, 12, 128], dtype=dtype)} for _ in range(self.num_transformer_blocks)]

    def _initialize_crossattn_cache(self, batch_size, dtype, device):
        self.crossattn_cache = [{"is_init": False} for _ in range(self.num_transformer_blocks)]

    def inference(self, noise, text_prompts, return_latents=False):
        B, F, C, H, W = noise.shape
        M = self.num_frame_per_block
        cond = self.text_encoder(text_prompts=text_prompts)
        output = torch.zeros_like(noise)
        self._initialize_kv_cache(B, noise.dtype, noise.device)
        self._initialize_crossattn_cache(B, noise.dtype, noise.device)
        if self.kv_cache1[0]["k"].shape[2:] == (12, 128) and self.frame_seq_length == 1560:
            raise RuntimeError("the harness left the peer's 1.3B cache sizes in place")
        for start in range(0, F, M):
            noisy = noise[:, start:start + M]
            for i, t in enumerate(self.denoising_step_list):
                timestep = torch.ones([B, M], dtype=torch.int64) * t
                _, denoised = self.generator(noisy, cond, timestep, kv_cache=self.kv_cache1, crossattn_cache=self.crossattn_cache,
                                             current_start=start * self.frame_seq_length)
                if i < len(self.denoising_step_list) - 1:
                    nxt = self.denoising_step_list[i + 1]
                    flat = denoised.flatten(0, 1)
                    noisy = self.scheduler.add_noise(flat, torch.randn_like(flat), nxt * torch.ones([B * M], dtype=torch.long)).unflatten(0, denoised.shape[:2])
                print(f"current_timestep: {t}")
            output[:, start:start + M] = denoised
            self.generator(denoised, cond, torch.zeros_like(timestep), kv_cache=self.kv_cache1, crossattn_cache=self.crossattn_cache,
                           current_start=start * self.frame_seq_length)
        video = self.vae.decode_to_pixel(output)
        return (video, output) if return_latents else video
