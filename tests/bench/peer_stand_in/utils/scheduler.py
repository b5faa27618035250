import torch


class FlowMatchScheduler:
    """Shifted flow-matching sigmas over 1000 training timesteps (sigma_i = shift s / (1 + (shift - 1) s))."""

    def __init__(self, shift=3.0, sigma_min=0.0, extra_one_step=True, num_train_timesteps=1000):
        self.shift, self.sigma_min, self.extra_one_step, self.num_train_timesteps = shift, sigma_min, extra_one_step, num_train_timesteps
        self.set_timesteps(100)

    def set_timesteps(self, num_inference_steps=100, training=False):
        s = torch.linspace(1.0, self.sigma_min, num_inference_steps + 1)[:-1]
        self.sigmas = self.shift * s / (1 + (self.shift - 1) * s)
        self.timesteps = self.sigmas * self.num_train_timesteps

    def sigma_of(self, timestep):
        idx = torch.argmin((self.timesteps[None, :] - timestep.float()[:, None]).abs(), dim=1)
        return self.sigmas.double()[idx]

    def add_noise(self, original_samples, noise, timestep):
        sigma = self.sigma_of(timestep).reshape(-1, 1, 1, 1)
        return ((1 - sigma) * original_samples + sigma * noise).type_as(noise)
