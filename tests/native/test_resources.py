"""The compiled kernels' resources, read off histream_engine._C with cuobjdump: no spills anywhere, shared memory within
each architecture's per-block limit, and the attention core's SASS on the tensor cores (HMMA) fed by ldmatrix (LDSM)
and cp.async (LDGSTS), for every architecture the extension was built for."""

import pytest

from histream_engine.native import built_reason, extension

pytestmark = pytest.mark.skipif(built_reason() is not None, reason=built_reason() or "")


@pytest.fixture(scope="module")
def rows():
    from histream_engine.native import resources

    try:
        resources.cuobjdump()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return resources.usage()


def test_every_kernel_is_built_for_every_architecture(rows):
    archs = {f"sm_{a}" for a in extension().cuda_archs.split(",")}
    assert {r.arch for r in rows} == archs
    for arch in archs:
        mine = [r for r in rows if r.arch == arch]
        assert {(r.kernel, r.dtype, r.head_dim) for r in mine if r.kernel == "attention_core"} == {
            ("attention_core", dt, d) for dt in ("fp16", "bf16") for d in (32, 64, 128)}
        for kernel in ("rope_prepass", "recache_write", "downsample_patchify"):
            assert {r.dtype for r in mine if r.kernel == kernel} == {"fp32", "fp16", "bf16"}, (arch, kernel)


def test_no_kernel_spills_or_uses_a_stack(rows):
    bad = [(r.arch, r.kernel, r.dtype, r.head_dim, r.local, r.stack) for r in rows if r.local or r.stack]
    assert not bad


def test_shared_memory_and_registers_fit_one_block_per_sm(rows):
    from histream_engine.native.resources import SMEM_LIMIT

    threads = extension().attention_tile()[2]
    for r in rows:
        assert r.static_shared + r.dynamic_shared <= SMEM_LIMIT[r.arch], r
        assert r.registers <= 255 and r.registers * (threads if r.kernel == "attention_core" else 0) <= 65536, r


def test_attention_core_runs_on_tensor_cores(rows):
    block_m, block_n, threads = extension().attention_tile()
    for r in (r for r in rows if r.kernel == "attention_core"):
        d = r.head_dim
        # per warp and key block: S = Q K^T is (d/16) x (BLOCK_N/8) m16n8k16 MMAs and O += P V (BLOCK_N/16) x (d/8);
        # the loop body appears twice (whole blocks unmasked, the tail masked)
        per_block = (d // 16) * (block_n // 8) + (block_n // 16) * (d // 8)
        assert r.sass["HMMA"] == 2 * per_block, r
        # ldmatrix.x4: Q once, then K (d/16 x BLOCK_N/16) and V (BLOCK_N/16 x d/16) per block, twice
        assert r.sass["LDSM"] == d // 16 + 2 * 2 * (d // 16) * (block_n // 16), r
        assert r.sass["LDGSTS"] > 0 and r.sass["MUFU.EX2"] > 0, r
