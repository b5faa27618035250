// See emulation.h. The loop structure follows attention_core_kernel line by line; the two hardware operations
// (ldmatrix, mma.m16n8k16) follow the PTX ISA, written here independently of index_math.h.
#include "emulation.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "index_math.h"
#include "launchers.h"

namespace histream {
namespace {

constexpr int kBM = 128, kBN = 64, kWarps = 8, kThreads = 256, kLanes = 32;
constexpr int kMaxD = 128;

float round_to(float x, int dtype) {
    if (dtype == kFloat16) return static_cast<float>(static_cast<_Float16>(x));
    if (dtype == kBFloat16) {
        uint32_t bits;
        std::memcpy(&bits, &x, 4);
        bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;  // round to nearest even
        std::memcpy(&x, &bits, 4);
    }
    return x;
}

struct Reg {  // one 32-bit register of two 16-bit elements, kept as floats
    float lo = 0.f, hi = 0.f;
};

// ldmatrix.x4: lanes 8j..8j+7 give the row addresses of matrix j; lane l receives in register j row l/4 of matrix j,
// elements 2(l%4) and 2(l%4)+1; with .trans, column l/4 of rows 2(l%4) and 2(l%4)+1.
void ldmatrix_x4(const std::vector<float>& smem, const int (&addr)[kLanes], bool trans, Reg (&out)[kLanes][4]) {
    for (int l = 0; l < kLanes; ++l)
        for (int j = 0; j < 4; ++j) {
            if (!trans) {
                const int a = addr[8 * j + l / 4];
                out[l][j] = {smem[a + 2 * (l % 4)], smem[a + 2 * (l % 4) + 1]};
            } else {
                out[l][j] = {smem[addr[8 * j + 2 * (l % 4)] + l / 4], smem[addr[8 * j + 2 * (l % 4) + 1] + l / 4]};
            }
        }
}

// mma.m16n8k16.row.col, D = A B + C, g = lane / 4, t = lane % 4: A registers (g, 2t), (g+8, 2t), (g, 2t+8),
// (g+8, 2t+8); B registers (k 2t, n g), (k 2t+8, n g); C elements (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1).
void mma(float (&c)[kLanes][4], const Reg (&a)[kLanes][4], const Reg (&b)[kLanes][2]) {
    float A[16][16], B[16][8];
    for (int l = 0; l < kLanes; ++l) {
        const int g = l / 4, t = l % 4;
        const int ar[4] = {g, g + 8, g, g + 8}, ac[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
        for (int r = 0; r < 4; ++r) {
            A[ar[r]][ac[r]] = a[l][r].lo;
            A[ar[r]][ac[r] + 1] = a[l][r].hi;
        }
        B[2 * t][g] = b[l][0].lo;
        B[2 * t + 1][g] = b[l][0].hi;
        B[2 * t + 8][g] = b[l][1].lo;
        B[2 * t + 9][g] = b[l][1].hi;
    }
    for (int l = 0; l < kLanes; ++l) {
        const int g = l / 4, t = l % 4;
        const int cr[4] = {g, g, g + 8, g + 8}, cc[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
        for (int i = 0; i < 4; ++i) {
            float sum = 0.f;
            for (int kk = 0; kk < 16; ++kk) sum += A[cr[i]][kk] * B[kk][cc[i]];
            c[l][i] += sum;
        }
    }
}

// cp.async of rows [row0, row0 + rows) of a [L, d] operand into a swizzled tile, zero past `limit`.
void load_tile(std::vector<float>& tile, const float* src, int d, int rows, int64_t row0, int64_t limit) {
    const int chunks = d / 8;
    for (int it = 0; it < rows * chunks / kThreads; ++it)
        for (int tid = 0; tid < kThreads; ++tid) {
            const int row = copy_row(tid, it, kThreads, chunks), ch = copy_chunk(tid, it, kThreads, chunks);
            const int64_t g = row0 + row;
            for (int e = 0; e < 8; ++e) tile[tile_offset(row, ch, chunks) + e] = g < limit ? src[g * d + ch * 8 + e] : 0.f;
        }
}

void shuffle_max(float (&x)[kLanes], int mask) {
    float y[kLanes];
    for (int l = 0; l < kLanes; ++l) y[l] = std::fmax(x[l], x[l ^ mask]);
    std::memcpy(x, y, sizeof(x));
}

void shuffle_add(float (&x)[kLanes], int mask) {
    float y[kLanes];
    for (int l = 0; l < kLanes; ++l) y[l] = x[l] + x[l ^ mask];
    std::memcpy(x, y, sizeof(x));
}

struct Warp {  // every lane's registers of one warp
    Reg qf[kLanes][kMaxD / 16][4];
    float acc[kLanes][kMaxD / 8][4] = {};
    float m[2][kLanes], l[2][kLanes];
};

void attend_block(Warp& w, const std::vector<float>& sk, const std::vector<float>& sv, int d, int n0, int lk, bool masked,
                  float scale, int dtype) {
    const int chunks = d / 8;
    static float s[kLanes][kBN / 8][4];
    std::memset(s, 0, sizeof(s));
    float c[kLanes][4];
    int addr[kLanes];
    Reg f[kLanes][4], a[kLanes][4], b[kLanes][2];
    for (int k16 = 0; k16 < d / 16; ++k16)
        for (int nn = 0; nn < kBN / 16; ++nn) {
            for (int l = 0; l < kLanes; ++l) addr[l] = tile_offset(nn * 16 + ldsm_k_row(l), ldsm_k_chunk(l, k16), chunks);
            ldmatrix_x4(sk, addr, false, f);
            for (int half = 0; half < 2; ++half) {
                for (int l = 0; l < kLanes; ++l) {
                    for (int r = 0; r < 4; ++r) a[l][r] = w.qf[l][k16][r];
                    b[l][0] = f[l][2 * half];
                    b[l][1] = f[l][2 * half + 1];
                    for (int i = 0; i < 4; ++i) c[l][i] = s[l][2 * nn + half][i];
                }
                mma(c, a, b);
                for (int l = 0; l < kLanes; ++l)
                    for (int i = 0; i < 4; ++i) s[l][2 * nn + half][i] = c[l][i];
            }
        }
    float mx[2][kLanes], alpha[2][kLanes], rs[2][kLanes] = {};
    for (int l = 0; l < kLanes; ++l) {
        mx[0][l] = mx[1][l] = -INFINITY;
        for (int nt = 0; nt < kBN / 8; ++nt)
            for (int i = 0; i < 4; ++i) {
                if (masked && !key_valid(n0, nt * 8 + frag_c_col(l, i), lk)) s[l][nt][i] = -INFINITY;
                mx[i >> 1][l] = std::fmax(mx[i >> 1][l], s[l][nt][i]);
            }
    }
    for (int r = 0; r < 2; ++r) {
        shuffle_max(mx[r], 1);
        shuffle_max(mx[r], 2);
        for (int l = 0; l < kLanes; ++l) {
            const SoftmaxStep st = softmax_step(w.m[r][l], mx[r][l] * scale);
            w.m[r][l] = st.m_new;
            alpha[r][l] = st.alpha;
        }
    }
    for (int l = 0; l < kLanes; ++l) {
        for (int nt = 0; nt < kBN / 8; ++nt)
            for (int i = 0; i < 4; ++i) {
                s[l][nt][i] = std::exp2(s[l][nt][i] * scale - w.m[i >> 1][l]);
                rs[i >> 1][l] += s[l][nt][i];
            }
        for (int r = 0; r < 2; ++r) w.l[r][l] = w.l[r][l] * alpha[r][l] + rs[r][l];
        for (int dt = 0; dt < d / 8; ++dt)
            for (int i = 0; i < 4; ++i) w.acc[l][dt][i] *= alpha[i >> 1][l];
    }
    for (int kk = 0; kk < kBN / 16; ++kk) {
        for (int l = 0; l < kLanes; ++l)
            for (int r = 0; r < 4; ++r) {
                const float* src = s[l][2 * kk + (r >> 1)];
                a[l][r] = {round_to(src[2 * (r & 1)], dtype), round_to(src[2 * (r & 1) + 1], dtype)};
            }
        for (int d16 = 0; d16 < d / 16; ++d16) {
            for (int l = 0; l < kLanes; ++l) addr[l] = tile_offset(kk * 16 + ldsm_v_row(l), ldsm_v_chunk(l, d16), chunks);
            ldmatrix_x4(sv, addr, true, f);
            for (int half = 0; half < 2; ++half) {
                for (int l = 0; l < kLanes; ++l) {
                    b[l][0] = f[l][2 * half];
                    b[l][1] = f[l][2 * half + 1];
                    for (int i = 0; i < 4; ++i) c[l][i] = w.acc[l][2 * d16 + half][i];
                }
                mma(c, a, b);
                for (int l = 0; l < kLanes; ++l)
                    for (int i = 0; i < 4; ++i) w.acc[l][2 * d16 + half][i] = c[l][i];
            }
        }
    }
}

}  // namespace

void emulate_attention_core(const float* q, const float* k, const float* v, float* out, int b, int h, int lq, int lk, int d,
                            int dtype, float scale) {
    if (d != 32 && d != 64 && d != 128) throw std::invalid_argument("emulate_attention_core: head_dim must be 32, 64 or 128");
    if (lq <= 0 || lk <= 0) throw std::invalid_argument("emulate_attention_core: Lq and Lk must be positive");
    const int chunks = d / 8;
    const KeyBlocks blocks = key_blocks(lk, kBN);
    std::vector<float> sq(kBM * d), sk(kBN * d), sv(kBN * d);
    std::vector<Warp> warps(kWarps);
    for (int bh = 0; bh < b * h; ++bh) {
        const float* qb = q + static_cast<int64_t>(bh) * lq * d;
        const float* kb = k + static_cast<int64_t>(bh) * lk * d;
        const float* vb = v + static_cast<int64_t>(bh) * lk * d;
        for (int64_t m0 = 0; m0 < lq; m0 += kBM) {
            load_tile(sq, qb, d, kBM, m0, lq);
            for (int wi = 0; wi < kWarps; ++wi) {
                Warp& w = warps[wi];
                std::memset(w.acc, 0, sizeof(w.acc));
                for (int l = 0; l < kLanes; ++l) {
                    w.m[0][l] = w.m[1][l] = -INFINITY;
                    w.l[0][l] = w.l[1][l] = 0.f;
                }
                int addr[kLanes];
                Reg f[kLanes][4];
                for (int k16 = 0; k16 < d / 16; ++k16) {
                    for (int l = 0; l < kLanes; ++l) addr[l] = tile_offset(wi * 16 + ldsm_a_row(l), ldsm_a_chunk(l, k16), chunks);
                    ldmatrix_x4(sq, addr, false, f);
                    for (int l = 0; l < kLanes; ++l)
                        for (int r = 0; r < 4; ++r) w.qf[l][k16][r] = f[l][r];
                }
            }
            for (int j = 0; j < blocks.total; ++j) {
                load_tile(sk, kb, d, kBN, static_cast<int64_t>(j) * kBN, lk);
                load_tile(sv, vb, d, kBN, static_cast<int64_t>(j) * kBN, lk);
                for (Warp& w : warps) attend_block(w, sk, sv, d, j * kBN, lk, j >= blocks.full, scale, dtype);
            }
            for (int wi = 0; wi < kWarps; ++wi) {
                Warp& w = warps[wi];
                for (int r = 0; r < 2; ++r) {
                    shuffle_add(w.l[r], 1);
                    shuffle_add(w.l[r], 2);
                }
                for (int l = 0; l < kLanes; ++l)
                    for (int dt = 0; dt < d / 8; ++dt)
                        for (int i = 0; i < 4; ++i) {
                            const int64_t row = m0 + wi * 16 + frag_c_row(l, i);
                            if (row < lq) {
                                const int col = dt * 8 + frag_c_col(l, i);
                                out[((static_cast<int64_t>(bh / h) * lq + row) * h + bh % h) * d + col] =
                                    round_to(w.acc[l][dt][i] / w.l[i >> 1][l], dtype);
                            }
                        }
            }
        }
    }
}

}  // namespace histream
