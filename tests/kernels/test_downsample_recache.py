import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err, random_dit
from histream_engine.attention import get_backend
from histream_engine.kernels.downsample_recache import downsample_patchify, recache_write
from histream_engine.model.dit import RMSNorm


@pytest.mark.parametrize("factor, shape", [(2, (2, 16, 3, 12, 20)), (3, (1, 16, 2, 18, 6))])
def test_downsample_patchify_then_embed_equals_avg_pool_and_patch_embedding(factor, shape):
    dit = random_dit("tiny", seed=2)
    torch.manual_seed(3)
    x = torch.randn(shape)
    patches = downsample_patchify(x, factor, dit.config.patch_size)
    want = dit.patchify(F.avg_pool3d(x, (1, factor, factor)))  # Conv3d patch embedding, [B, F, h, w, C]
    assert rel_err(dit.embed_patches(patches), want) < 1e-6
    assert rel_err(patches, get_backend("torch").downsample_patches(x, factor, dit.config.patch_size)) < 1e-6


def test_downsample_patchify_rejects_indivisible_latents():
    with pytest.raises(ValueError, match="not divisible"):
        downsample_patchify(torch.randn(1, 16, 3, 10, 8), 2, (1, 2, 2))


@pytest.mark.parametrize("with_norm", [True, False])
def test_recache_write_norms_k_and_touches_only_its_rows(with_norm):
    torch.manual_seed(4)
    B, L, H, D, R = 2, 15, 3, 32, 60  # C = 96, not a power of two
    k_proj, v_proj = 2 * torch.randn(B, L, H * D), torch.randn(B, L, H * D)
    norm = RMSNorm(H * D, 1e-6)
    norm.weight.data = torch.rand(H * D) + 0.5
    rows = torch.tensor([40 + i for i in range(10)] + [3, 4, 5, 6, 7])  # wraps around the ring end
    k_store, v_store = torch.randn(B, R, H, D), torch.randn(B, R, H, D)
    k_before, v_before = k_store.clone(), v_store.clone()
    recache_write(k_proj, v_proj, norm.weight if with_norm else None, 1e-6, rows, k_store, v_store)
    k_want = (norm(k_proj) if with_norm else k_proj).unflatten(-1, (H, D))
    assert rel_err(k_store[:, rows], k_want) < 1e-6
    assert torch.equal(v_store[:, rows], v_proj.unflatten(-1, (H, D)))
    untouched = torch.ones(R, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(k_store[:, untouched], k_before[:, untouched])
    assert torch.equal(v_store[:, untouched], v_before[:, untouched])


def test_recache_write_rejects_bad_rows():
    k = torch.randn(1, 4, 64)
    store = torch.randn(1, 8, 2, 32)
    with pytest.raises(ValueError, match="int64"):
        recache_write(k, k, None, 1e-6, torch.arange(4, dtype=torch.int32), store, store)
    with pytest.raises(ValueError, match="H\\*D"):
        recache_write(k, k, None, 1e-6, torch.arange(4), torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 16))
