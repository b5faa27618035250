// histream_engine._C: the CUDA kernels' launchers (raw pointers, sizes, strides, dtype code, stream), and, in the
// submodule `host`, the kernels' index math and the attention core's host emulation for the CPU tests.
// No libtorch: the Python launchers (histream_engine/native/ops.py) check tensors and pass their data_ptr().
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <tuple>
#include <vector>

#include "emulation.h"
#include "index_math.h"
#include "launchers.h"

namespace py = pybind11;
using namespace histream;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// The cos/sin table row of every (token, pair) of a frame-major token run: [rows][pairs].
std::vector<std::vector<int>> rope_table_rows(const std::vector<int32_t>& frame_pos, int64_t rows, int tokens_per_frame,
                                              int pairs, int gw, int pt, int ph) {
    if (tokens_per_frame <= 0 || rows > static_cast<int64_t>(frame_pos.size()) * tokens_per_frame)
        throw std::invalid_argument("rope_table_rows: more rows than the frames hold");
    std::vector<std::vector<int>> out(rows, std::vector<int>(pairs));
    for (int64_t r = 0; r < rows; ++r)
        for (int p = 0; p < pairs; ++p) out[r][p] = rope_table_row(frame_pos.data(), r, tokens_per_frame, p, gw, pt, ph);
    return out;
}

// The latent pixel (b, c, frame, y0, x0) that starts each output element (token, p) of downsample_patchify.
std::vector<std::tuple<int64_t, int, int, int, int>> patch_sources(int64_t tokens, int p_len, int ft, int gh, int gw, int pt,
                                                                   int ph, int pw, int r) {
    std::vector<std::tuple<int64_t, int, int, int, int>> out;
    out.reserve(tokens * p_len);
    for (int64_t t = 0; t < tokens; ++t)
        for (int p = 0; p < p_len; ++p) {
            const PatchSource s = patch_source(t, p, ft, gh, gw, pt, ph, pw, r);
            out.emplace_back(s.b, s.c, s.frame, s.y0, s.x0);
        }
    return out;
}

FloatArray emulate(FloatArray q, FloatArray k, FloatArray v, int dtype, float scale) {
    if (q.ndim() != 4 || k.ndim() != 4 || v.ndim() != 4) throw std::invalid_argument("emulate_attention_core: q, k, v must be [B, H, L, D]");
    const int b = q.shape(0), h = q.shape(1), lq = q.shape(2), d = q.shape(3), lk = k.shape(2);
    for (const auto* t : {&k, &v})
        if (t->shape(0) != b || t->shape(1) != h || t->shape(2) != lk || t->shape(3) != d)
            throw std::invalid_argument("emulate_attention_core: k and v must be [B, H, Lk, D] matching q");
    FloatArray out({b, lq, h, d});
    emulate_attention_core(q.data(), k.data(), v.data(), out.mutable_data(), b, h, lq, lk, d, dtype, scale);
    return out;
}

void downsample(int dtype, int device, uintptr_t stream, uintptr_t x, const std::vector<int64_t>& strides, uintptr_t out, int b,
                int c, int ft, int gh, int gw, int pt, int ph, int pw, int r) {
    if (strides.size() != 5) throw std::invalid_argument("downsample_patchify: x needs 5 strides");
    downsample_patchify(dtype, device, stream, x, strides.data(), out, b, c, ft, gh, gw, pt, ph, pw, r);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "histream_engine's CUDA kernels (raw pointers + stream; see histream_engine.native.ops for the checked launchers)";
#ifdef HISTREAM_CUDA_ARCHS
    m.attr("cuda_archs") = HISTREAM_CUDA_ARCHS;
#endif
    m.def("rope_prepass", &rope_prepass, py::call_guard<py::gil_scoped_release>());
    m.def("recache_write", &recache_write, py::call_guard<py::gil_scoped_release>());
    m.def("downsample_patchify", &downsample, py::call_guard<py::gil_scoped_release>());
    m.def("attention_core", &attention_core, py::call_guard<py::gil_scoped_release>());
    m.def("attention_smem_bytes", &attention_smem_bytes);
    m.def("attention_tile", [] { return std::make_tuple(attention_block_m(), attention_block_n(), attention_threads()); },
          "(BLOCK_M, BLOCK_N, threads) of the attention core");

    py::module_ host = m.def_submodule("host", "the kernels' index math on the host, for tests");
    host.def("rope_axis_position", &rope_axis_position);
    host.def("rope_table_rows", &rope_table_rows);
    host.def("patch_sources", &patch_sources);
    host.def("key_blocks", [](int lk, int bn) { const KeyBlocks k = key_blocks(lk, bn); return std::make_tuple(k.full, k.total); });
    host.def("key_valid", &key_valid);
    host.def("softmax_step", [](float m_old, float block_max) { const SoftmaxStep s = softmax_step(m_old, block_max); return std::make_tuple(s.m_new, s.alpha); });
    host.def("swizzle_chunk", &swizzle_chunk);
    host.def("tile_offset", &tile_offset);
    host.def("ldsm_a", [](int lane, int k16) { return std::make_tuple(ldsm_a_row(lane), ldsm_a_chunk(lane, k16)); });
    host.def("ldsm_k", [](int lane, int k16) { return std::make_tuple(ldsm_k_row(lane), ldsm_k_chunk(lane, k16)); });
    host.def("ldsm_v", [](int lane, int d16) { return std::make_tuple(ldsm_v_row(lane), ldsm_v_chunk(lane, d16)); });
    host.def("frag_c", [](int lane, int i) { return std::make_tuple(frag_c_row(lane, i), frag_c_col(lane, i)); });
    host.def("copy_coords", [](int tid, int it, int threads, int chunks) { return std::make_tuple(copy_row(tid, it, threads, chunks), copy_chunk(tid, it, threads, chunks)); });
    host.def("emulate_attention_core", &emulate, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("dtype"), py::arg("qk_scale_log2"));
}
