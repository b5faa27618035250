"""The CUDA kernels' index math (csrc/index_math.h), run on the host through histream_engine._C.host and compared with
the Python references on the Triton tests' cases. Skipped, with the reason, where the extension was not built."""

import math

import pytest
import torch

from histream_engine.attention.rope import axis_dims, grid_positions, pair_axis
from histream_engine.attention.torch_ref import TorchAttention
from histream_engine.native import built_reason, extension

pytestmark = pytest.mark.skipif(built_reason() is not None, reason=built_reason() or "")


@pytest.fixture(scope="module")
def host():
    return extension().host


@pytest.mark.parametrize(
    "head_dim, grid, frame_pos",
    [
        (32, (1, 97), [0, 10, 11, 12, 13, 14]),  # 97 tokens per frame, positions past the window
        (64, (3, 7), [0, 1, 2, 3, 4, 5, 6]),  # odd grid
        (128, (5, 3), [0, 1, 2]),  # the real head dim
    ],
)
def test_rope_table_rows_match_the_grid_positions(host, head_dim, grid, frame_pos):
    gh, gw = grid
    pt, ph, _ = (d // 2 for d in axis_dims(head_dim))
    # fixed-device: the kernels' index math run on the host, against the Python reference on the host
    got = torch.tensor(host.rope_table_rows(frame_pos, len(frame_pos) * gh * gw, gh * gw, head_dim // 2, gw, pt, ph))
    want = grid_positions(frame_pos, gh, gw)[:, pair_axis(head_dim)]  # [N, D/2]: each pair's position on its axis  # fixed-device: the host reference
    assert torch.equal(got, want)


@pytest.mark.parametrize("shape, factor", [((2, 3, 2, 8, 12), 2), ((1, 2, 1, 12, 6), 3), ((1, 16, 3, 4, 4), 1)])
def test_patch_sources_match_the_torch_downsample(host, shape, factor):
    """Each output element's first source pixel, read off the torch reference applied to coordinate maps: the
    average of a coordinate over an r x r window is its start plus (r - 1) / 2."""
    patch = (1, 2, 2)
    B, C, F, H, W = shape
    # fixed-device: coordinate maps for the host index math, exact in float64 on the host
    grids = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in shape), indexing="ij")
    ref = [TorchAttention().downsample_patches(g, factor, patch) for g in grids]  # each [B, F', h, w, P]
    ft, gh, gw, p = ref[0].shape[1:]
    # fixed-device: the host index math's output
    got = torch.tensor(host.patch_sources(B * ft * gh * gw, p, ft, gh, gw, *patch, factor), dtype=torch.float64)  # [N*P, 5]
    shift = (factor - 1) / 2
    want = torch.stack([ref[0], ref[1], ref[2], ref[3] - shift, ref[4] - shift], -1).reshape(-1, 5)
    assert torch.equal(got, want)


@pytest.mark.parametrize("block_n", [64, 32])
def test_key_blocks_cover_every_key_once_and_mask_only_the_tail(host, block_n):
    for lk in [1, 31, 63, 64, 65, 97, 582, 3 * 8160]:
        full, total = host.key_blocks(lk, block_n)
        assert full * block_n <= lk <= total * block_n and total - full in (0, 1) and (total - full == 1) == (lk % block_n != 0)
        valid = [host.key_valid(n0, c, lk) for n0 in range(0, total * block_n, block_n) for c in range(block_n)]
        assert sum(valid) == lk and all(valid[:lk])


def test_softmax_step_is_the_online_rescale(host):
    for m_old, block_max in [(-math.inf, 3.5), (2.0, 5.25), (5.25, 2.0), (-1.5, -1.5)]:
        m_new, alpha = host.softmax_step(m_old, block_max)
        assert m_new == max(m_old, block_max)
        assert alpha == pytest.approx(2.0 ** (m_old - m_new), rel=1e-6)
    assert host.softmax_step(-math.inf, 0.0)[1] == 0.0  # the first block rescales nothing


def _bank_groups(host, offsets):
    """16-byte bank group (of the 8 in a 128-byte span) of each element offset of a 2-byte tile."""
    return [(off * 2 // 16) % 8 for off in offsets]


@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_swizzle_is_a_permutation_and_every_ldmatrix_phase_is_conflict_free(host, head_dim):
    chunks = head_dim // 8
    for row in range(64):
        assert sorted(host.swizzle_chunk(row, c, chunks) for c in range(chunks)) == list(range(chunks))
    operands = {"a": (host.ldsm_a, 16), "k": (host.ldsm_k, 16), "v": (host.ldsm_v, 16)}
    for name, (fn, rows_per_call) in operands.items():
        for row0 in range(0, 64, rows_per_call):
            for step in range(head_dim // 16):
                coords = [fn(lane, step) for lane in range(32)]
                offsets = [host.tile_offset(row0 + r, c, chunks) for r, c in coords]
                assert len(set(offsets)) == 32, name  # 32 distinct rows of 16 bytes
                for j in range(4):  # each 8x8 matrix is one shared-memory phase: 8 distinct bank groups
                    assert len(set(_bank_groups(host, offsets[8 * j: 8 * j + 8]))) == 8, (name, row0, step, j)


@pytest.mark.parametrize("head_dim, rows", [(32, 64), (64, 64), (128, 64), (128, 128), (32, 128)])
def test_cp_async_copies_cover_each_tile_chunk_once(host, head_dim, rows):
    chunks, threads = head_dim // 8, 256
    seen = [host.copy_coords(tid, it, threads, chunks) for it in range(rows * chunks // threads) for tid in range(threads)]
    assert sorted(seen) == [(r, c) for r in range(rows) for c in range(chunks)]


def test_accumulator_fragment_covers_the_16x8_tile(host):
    cells = sorted(host.frag_c(lane, i) for lane in range(32) for i in range(4))
    assert cells == [(r, c) for r in range(16) for c in range(8)]
