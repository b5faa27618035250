"""How a chunk denoises: schedules as data, flow-matching sampling, latent resampling, the chunk body and its CUDA
graph replays, and the check that a chunk's latents stayed finite."""
