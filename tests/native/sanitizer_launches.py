"""One launch of each histream_engine._C kernel at awkward sizes, run under compute-sanitizer by test_gpu.py, on the
device its ``device`` fixture names (the first argument)."""

import sys

import torch

from histream_engine.attention.rope import axis_dims, inv_freqs, rope_table
from histream_engine.native import ops


def launch_each_kernel(device: torch.device) -> None:
    torch.manual_seed(0)
    dt = torch.bfloat16
    B, H, D, gh, gw = 1, 2, 64, 3, 7
    S, frames, slots = gh * gw, 3, 6
    cos, sin = rope_table(16, inv_freqs(D), device=device)
    pairs = tuple(d // 2 for d in axis_dims(D))
    q = torch.randn(B, frames * S, H, D, device=device, dtype=dt)
    store = torch.randn(B, slots * S, H, D, device=device, dtype=dt)
    q_out = torch.empty(B, H, frames * S, D, device=device, dtype=dt)
    k_out = torch.empty(B, H, slots * S, D, device=device, dtype=dt)
    ops.rope_prepass(q, torch.arange(frames, dtype=torch.int32, device=device), cos, sin, (gh, gw), pairs, q_out,
                     store, torch.arange(5, dtype=torch.int32, device=device), k_out)
    ops.attention_core(q_out, k_out[:, :, : 5 * S], store[:, : 5 * S].transpose(1, 2))
    proj = torch.randn(B, frames * S, H * D, device=device, dtype=dt)
    ops.recache_write(proj, proj.clone(), torch.ones(H * D, device=device, dtype=dt), 1e-6,
                      torch.arange(2 * S, 5 * S, device=device), store, store.clone(),
                      (torch.arange(frames, dtype=torch.int32, device=device), cos, sin, (gh, gw), pairs))
    ops.downsample_patchify(torch.randn(B, 16, 3, 12, 28, device=device, dtype=dt), 2, (1, 2, 2))
    torch.cuda.synchronize(device)


if __name__ == "__main__":
    launch_each_kernel(torch.device(sys.argv[1]))  # fixed-device: the test's fixture, passed on the command line
    print("sanitizer launches done")
