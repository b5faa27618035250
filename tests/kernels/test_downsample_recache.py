import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err, random_dit
from histream_engine.attention import get_backend
from histream_engine.kernels.downsample_recache import downsample_patchify, recache_write
from histream_engine.attention.ring import RingView
from histream_engine.attention.rope import apply_rope, axis_dims, inv_freqs
from histream_engine.model.dit import RMSNorm


@pytest.mark.parametrize("factor, shape", [(2, (2, 16, 3, 12, 20)), (3, (1, 16, 2, 18, 6))])
def test_downsample_patchify_then_embed_equals_avg_pool_and_patch_embedding(factor, shape, device):
    dit = random_dit("tiny", seed=2, device=device)
    torch.manual_seed(3)
    x = torch.randn(shape, device=device)
    patches = downsample_patchify(x, factor, dit.config.patch_size)
    want = dit.patchify(F.avg_pool3d(x, (1, factor, factor)))  # Conv3d patch embedding, [B, F, h, w, C]
    assert rel_err(dit.embed_patches(patches), want) < 1e-6
    assert rel_err(patches, get_backend("torch").downsample_patches(x, factor, dit.config.patch_size)) < 1e-6


def test_downsample_patchify_rejects_indivisible_latents(device):
    with pytest.raises(ValueError, match="not divisible"):
        downsample_patchify(torch.randn(1, 16, 3, 10, 8, device=device), 2, (1, 2, 2))


@pytest.mark.parametrize("with_norm", [True, False])
@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("head_major", [True, False])
def test_recache_write_norms_rotates_k_and_touches_only_its_rows(with_norm, rotate, head_major, device):
    torch.manual_seed(4)
    B, H, D, grid, R = 2, 3, 32, (3, 5), 90  # C = 96, not a power of two; 15 tokens per frame, 6 ring slots
    L = 3 * grid[0] * grid[1]
    k_proj, v_proj = 2 * torch.randn(B, L, H * D, device=device), torch.randn(B, L, H * D, device=device)
    norm = RMSNorm(H * D, 1e-6).to(device)
    norm.weight.data = torch.rand(H * D, device=device) + 0.5
    view = RingView(slots=[0, 2, 3, 4, 5, 1], frame_pos=[0, 7, 8, 9, 10, 11], query_frames=3, grid=grid,
                    num_slots=6, freqs=inv_freqs(D, 10000.0, (1.0, 1.2, 1.9)), device=device, rotated_keys=rotate)
    rows = view.write_rows  # slots 4, 5, 1: wraps around the ring end
    if head_major:  # the engine's layout: [B, H, R, D] memory seen as [B, R, H, D]
        k_store, v_store = torch.randn(B, H, R, D, device=device).transpose(1, 2), torch.randn(B, H, R, D, device=device).transpose(1, 2)
    else:
        k_store, v_store = torch.randn(B, R, H, D, device=device), torch.randn(B, R, H, D, device=device)
    k_before, v_before = k_store.clone(), v_store.clone()
    rope = None
    if rotate:
        cos, sin = view.rope_table
        rope = (view.query_position_index, cos, sin, grid, tuple(d // 2 for d in axis_dims(D)))
    recache_write(k_proj, v_proj, norm.weight if with_norm else None, 1e-6, rows, k_store, v_store, rope)
    k_want = (norm(k_proj) if with_norm else k_proj).unflatten(-1, (H, D))
    if rotate:
        k_want = apply_rope(k_want, *view.q_rope)
    assert rel_err(k_store[:, rows], k_want) < 1e-6
    assert torch.equal(v_store[:, rows], v_proj.unflatten(-1, (H, D)))
    untouched = torch.ones(R, dtype=torch.bool, device=device)
    untouched[rows] = False
    assert torch.equal(k_store[:, untouched], k_before[:, untouched])
    assert torch.equal(v_store[:, untouched], v_before[:, untouched])


def test_recache_write_rejects_bad_rows(device):
    k = torch.randn(1, 4, 64, device=device)
    store = torch.randn(1, 8, 2, 32, device=device)
    with pytest.raises(ValueError, match="int64"):
        recache_write(k, k, None, 1e-6, torch.arange(4, dtype=torch.int32, device=device), store, store)
    with pytest.raises(ValueError, match="H\\*D"):
        recache_write(k, k, None, 1e-6, torch.arange(4, device=device), torch.randn(1, 8, 2, 16, device=device),
                      torch.randn(1, 8, 2, 16, device=device))
