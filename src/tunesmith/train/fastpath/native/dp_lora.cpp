// A LoRA node's rank-r products in AVX512-BF16 dot products: the vector passes of
// lora_forward_, lora_operands and lora_backward (kernels.cpp) where the CPU has them.
//
// The fp32 pass converts every row of x and g to fp32 and sums with fp32 FMAs; with two
// products of bf16 pairs per lane, vdpbf16ps does twice the work per instruction and reads the
// bf16 rows as they are. Every operand is bf16 already (x, g, h, dh; A and s B rounded as the
// eager casts round them), so each product is exact in fp32 and only the order of the sums
// differs from the fp32 pass (within one bf16 rounding, test_native.py). Four products:
//
//   h = x Aᵀ, dh = g (s B)     rows against rows: pairs along the rows' own length
//   out += h (s B)ᵀ, dh A      sums over the rank: A and s B packed in pairs of their rank rows,
//                              h's and dh's adjacent values are the pairs
//   d_a = dhᵀ x, d_bᵀ = hᵀ g   sums over the rows: two rows interleaved into pairs, against
//                              hᵀ and dhᵀ packed in row pairs; split over threads by columns,
//                              so each thread's sums are whole and no per-thread copies are summed
//
// Rounded to bf16 where the fp32 pass rounds (vcvtneps2bf16: to nearest even, as ATen's
// conversion; like vdpbf16ps it takes subnormals as zero, ~1e-38, far below any value here); the
// gradients' fp32 sums go back to kernels.cpp, which rounds and scales them as before. Compiled
// in every x86-64 build with the target attribute; run only where the CPU says it has
// AVX512-BF16 (dp_lora_ready()). On the 2-core AMD EPYC (Zen 4), warm, 480 rows: the demo's
// gate + up node 195 -> 100 us forward, 311 -> 133 backward; in a demo step the LoRA kernels
// ~55 -> ~35 ms (benchmarks/RESULTS.md, "The LoRA products in AVX512-BF16 dot products").
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "lora.h"

#if defined(__x86_64__) && (defined(__clang__) || __GNUC__ >= 10)
#define TUNESMITH_DP 1
#include <immintrin.h>
#define DP_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#endif
// Loops over registers unrolled whole: GCC otherwise keeps an array of vector sums in memory as
// well and stores every sum on every step (over_rows ran bound by those stores).
#define UNROLL _Pragma("GCC unroll 16")

namespace {
#ifdef TUNESMITH_DP

using lora::in_blocks_of_4;
using lora::in_row_blocks;
using u16 = uint16_t;
using u32 = uint32_t;
constexpr int kPairsMax = 32;   // pairs of a node's rank (kernels.cpp's limit of 64, halved)
constexpr int64_t kCols = 64;   // columns of a d_a / d_bᵀ task: four vectors of sums per rank

using lora::upper_half;
inline u32 pair(u16 lo, u16 hi) { return lo | (static_cast<u32>(hi) << 16); }

// The masks of a vector's first n lanes.
DP_TARGET inline __mmask32 first32(int64_t n) {
  return n >= 32 ? ~__mmask32(0) : (__mmask32(1) << n) - 1;
}
DP_TARGET inline __mmask16 first16(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
}
DP_TARGET inline __m512 dp(__m512 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}
DP_TARGET inline __m512 widen(__m256i v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

// Lane i of the result: the sum of v[i]'s lanes, for 16 vectors (45 shuffles and adds where
// 16 reductions of one vector each take ~160).
DP_TARGET inline __m512 sums16(const __m512* v) {
  __m512 a[8], b[4], c[2];
  UNROLL for (int i = 0; i < 8; i++)  // [v 2i's halves added | v 2i+1's]
    a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
  UNROLL for (int i = 0; i < 4; i++)  // 128-bit lanes: v 4i, 4i + 1, 4i + 2, 4i + 3
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xdd));
  UNROLL for (int i = 0; i < 2; i++)
    c[i] = _mm512_add_ps(_mm512_unpacklo_ps(b[2 * i], b[2 * i + 1]),
                         _mm512_unpackhi_ps(b[2 * i], b[2 * i + 1]));
  const __m512 d =
      _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], 0x44), _mm512_shuffle_ps(c[0], c[1], 0xee));
  // d's lane 4a + b holds v[4b + a]'s sum
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, d);
}

// out[q][jj] = sum_k rows[q][k] w[jj][k] over k in [0, n): RB bf16 rows (stride ld) against JB
// (stride ldw), in fp32.
template <int RB, int JB>
DP_TARGET void dots(const u16* rows, int64_t ld, const u16* w, int64_t ldw, int64_t n, float* out) {
  __m512 acc[RB][JB];
  UNROLL for (int q = 0; q < RB; q++)
    UNROLL for (int jj = 0; jj < JB; jj++) acc[q][jj] = _mm512_setzero_ps();
  for (int64_t k = 0; k < n; k += 32) {
    const __mmask32 mk = first32(n - k);
    __m512i xr[RB];
    UNROLL for (int q = 0; q < RB; q++) xr[q] = _mm512_maskz_loadu_epi16(mk, rows + q * ld + k);
    UNROLL for (int jj = 0; jj < JB; jj++) {
      const __m512i wv = _mm512_maskz_loadu_epi16(mk, w + jj * ldw + k);
      UNROLL for (int q = 0; q < RB; q++) acc[q][jj] = dp(acc[q][jj], xr[q], wv);
    }
  }
  if constexpr (RB * JB == 16) {
    _mm512_storeu_ps(out, sums16(&acc[0][0]));
  } else {
    UNROLL for (int q = 0; q < RB; q++)
      UNROLL for (int jj = 0; jj < JB; jj++) out[q * JB + jj] = _mm512_reduce_add_ps(acc[q][jj]);
  }
}

// out[q][0:n] = bf16(base[q][0:n] + sum_p c[q][p] · wp[p][0:n]) for RB rows (base may be
// null): c[q][p] a pair of the row's rank values, wp[p][k] the same pair of rank rows' values
// at k; n in blocks of four vectors, so each pair's coefficient serves four products.
template <int RB>
DP_TARGET void combine(const u16* base, const u32* c, int64_t npairs, const u32* wp, int64_t n,
                       u16* out, int64_t ld) {
  for (int64_t k0 = 0; k0 < n; k0 += 64) {
    __mmask16 mk[4];
    UNROLL for (int v = 0; v < 4; v++) mk[v] = first16(std::max<int64_t>(0, n - k0 - 16 * v));
    __m512 acc[RB][4];
    UNROLL for (int q = 0; q < RB; q++)
      UNROLL for (int v = 0; v < 4; v++)
        acc[q][v] = base == nullptr
                        ? _mm512_setzero_ps()
                        : widen(_mm256_maskz_loadu_epi16(mk[v], base + q * ld + k0 + 16 * v));
    for (int64_t p = 0; p < npairs; p++) {
      __m512i w[4];
      UNROLL for (int v = 0; v < 4; v++)
        w[v] = _mm512_maskz_loadu_epi32(mk[v], wp + p * n + k0 + 16 * v);
      UNROLL for (int q = 0; q < RB; q++) {
        const __m512i cv = _mm512_set1_epi32(static_cast<int>(c[q * kPairsMax + p]));
        UNROLL for (int v = 0; v < 4; v++) acc[q][v] = dp(acc[q][v], w[v], cv);
      }
    }
    UNROLL for (int q = 0; q < RB; q++)
      UNROLL for (int v = 0; v < 4; v++)
        _mm256_mask_storeu_epi16(out + q * ld + k0 + 16 * v, mk[v],
                                 (__m256i)_mm512_cvtneps_pbh(acc[q][v]));
  }
}

// c[q][p] = the pairs of row q's values vals[q][j0 + 2p], vals[q][j0 + 2p + 1] (zero past r).
template <int RB>
inline int64_t pairs_of_rows(const u16* vals, int64_t ld, int64_t j0, int64_t r, u32* c) {
  const int64_t np = (r + 1) / 2;
  UNROLL for (int q = 0; q < RB; q++)
    for (int64_t p = 0; p < np; p++) {
      const int64_t j = j0 + 2 * p;
      c[q * kPairsMax + p] = pair(vals[q * ld + j], j + 1 < j0 + r ? vals[q * ld + j + 1] : 0);
    }
  return np;
}

// out[j][0:ncol] = sum_i cp[j][i] · rows[i][0:ncol] for J ranks j, over the m rows in pairs
// (cp in row pairs, stride ldp; ncol <= 64): the rows' pairs come from interleaving two rows
// (unpack, per 128-bit lane), whose order the sums keep until they are stored.
template <int J>
DP_TARGET void over_rows(const u16* rows, int64_t ld, int64_t m, const u32* cp, int64_t ldp,
                         int64_t ncol, float* out, int64_t ldo) {
  __m512 acc[J][4];
  UNROLL for (int j = 0; j < J; j++)
    UNROLL for (int v = 0; v < 4; v++) acc[j][v] = _mm512_setzero_ps();
  const __mmask32 m0 = first32(ncol), m1 = first32(std::max<int64_t>(0, ncol - 32));
  for (int64_t i = 0, p = 0; i < m; i += 2, p++) {
    const u16* r0 = rows + i * ld;
    const bool two = i + 1 < m;
    const __m512i a0 = _mm512_maskz_loadu_epi16(m0, r0);
    const __m512i a1 = _mm512_maskz_loadu_epi16(m1, r0 + 32);
    const __m512i b0 = two ? _mm512_maskz_loadu_epi16(m0, r0 + ld) : _mm512_setzero_si512();
    const __m512i b1 = two ? _mm512_maskz_loadu_epi16(m1, r0 + ld + 32) : _mm512_setzero_si512();
    const __m512i v[4] = {_mm512_unpacklo_epi16(a0, b0), _mm512_unpackhi_epi16(a0, b0),
                          _mm512_unpacklo_epi16(a1, b1), _mm512_unpackhi_epi16(a1, b1)};
    UNROLL for (int j = 0; j < J; j++) {
      const __m512i cv = _mm512_set1_epi32(static_cast<int>(cp[j * ldp + p]));
      UNROLL for (int u = 0; u < 4; u++) acc[j][u] = dp(acc[j][u], v[u], cv);
    }
  }
  // unpacklo's lane 4L + c holds column 8L + c, unpackhi's column 8L + 4 + c: back to order.
  const __m512i first =
      _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second =
      _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  UNROLL for (int j = 0; j < J; j++)
    UNROLL for (int half = 0; half < 2; half++) {
      const __m512 lo = acc[j][2 * half], hi = acc[j][2 * half + 1];
      const int64_t c0 = 32 * half;
      float* o = out + j * ldo + c0;
      _mm512_mask_storeu_ps(o, first16(std::max<int64_t>(0, ncol - c0)),
                            _mm512_permutex2var_ps(lo, first, hi));
      _mm512_mask_storeu_ps(o + 16, first16(std::max<int64_t>(0, ncol - c0 - 16)),
                            _mm512_permutex2var_ps(lo, second, hi));
    }
}

// cp[j][p] = the pair (vals[2p][j], vals[2p + 1][j]) of an (m, r) matrix's column j (zero past m).
std::vector<u32> column_pairs(const u16* vals, int64_t m, int64_t r) {
  const int64_t np = (m + 1) / 2;
  std::vector<u32> cp(r * np);
  for (int64_t p = 0; p < np; p++) {
    const u16* a = vals + 2 * p * r;
    const bool two = 2 * p + 1 < m;
    for (int64_t j = 0; j < r; j++) cp[j * np + p] = pair(a[j], two ? a[r + j] : 0);
  }
  return cp;
}

// wp[p][k] = the pair (src[j0 + 2p][c0 + k], src[j0 + 2p + 1][c0 + k]) (zero past r) for k in
// [0, n): rank rows of an fp32 matrix (row stride ld) that holds bf16 values, packed in pairs.
std::vector<u32> rank_pairs(const float* src, int64_t ld, int64_t j0, int64_t r, int64_t c0,
                            int64_t n) {
  const int64_t np = (r + 1) / 2;
  std::vector<u32> wp(np * n);
  for (int64_t p = 0; p < np; p++) {
    const float* a = src + (j0 + 2 * p) * ld + c0;
    const bool two = 2 * p + 1 < r;
    for (int64_t k = 0; k < n; k++)
      wp[p * n + k] = pair(upper_half(a[k]), two ? upper_half(a[ld + k]) : 0);
  }
  return wp;
}

std::vector<u16> bf16_bits(const float* src, int64_t n) {
  std::vector<u16> out(n);
  for (int64_t i = 0; i < n; i++) out[i] = upper_half(src[i]);
  return out;
}

// One over_rows task: J (1-4) rank rows of the sums, kCols columns from c0.
struct Task {
  const u16* rows;  // the task's first column of the summed rows (g or x)
  int64_t ld, ncol;
  const u32* cp;    // its first rank row of the column pairs (hᵀ or dhᵀ)
  int64_t J;
  float* out;       // its first rank row and column of d_bᵀ or d_a
  int64_t ldo;
};

// The tasks of an (r ranks x n columns) block of sums from column c0 of rows and out.
void add_tasks(std::vector<Task>& tasks, const u16* rows, int64_t ld, const u32* cp, int64_t np,
               int64_t j0, int64_t r, int64_t c0, int64_t n, float* out, int64_t ldo) {
  for (int64_t j = j0; j < j0 + r; j += 4)
    for (int64_t c = c0; c < c0 + n; c += kCols)
      tasks.push_back({rows + c, ld, std::min(kCols, c0 + n - c), cp + j * np,
                       std::min<int64_t>(4, j0 + r - j), out + j * ldo + c, ldo});
}

void run(const Task& t, int64_t m, int64_t np) {
  switch (t.J) {
    case 4: over_rows<4>(t.rows, t.ld, m, t.cp, np, t.ncol, t.out, t.ldo); break;
    case 3: over_rows<3>(t.rows, t.ld, m, t.cp, np, t.ncol, t.out, t.ldo); break;
    case 2: over_rows<2>(t.rows, t.ld, m, t.cp, np, t.ncol, t.out, t.ldo); break;
    default: over_rows<1>(t.rows, t.ld, m, t.cp, np, t.ncol, t.out, t.ldo); break;
  }
}

#endif  // TUNESMITH_DP
}  // namespace

bool dp_lora_ready() {
#ifdef TUNESMITH_DP
  static const bool ready = __builtin_cpu_supports("avx512bf16");
  return ready;
#else
  return false;
#endif
}

void dp_lora_forward(const c10::BFloat16* x, const LoraNode& s, const float* af, const float* bt,
                     c10::BFloat16* out, c10::BFloat16* h, c10::BFloat16* h32, int64_t r32) {
#ifndef TUNESMITH_DP
  TORCH_CHECK(false, "AVX512-BF16 dot products are not built here");
#else
  TORCH_CHECK(dp_lora_ready(), "this CPU has no AVX512-BF16");
  const int64_t m = s.m, d_in = s.d_in, R = s.R, N = s.N;
  const auto a16 = bf16_bits(af, R * d_in);
  std::vector<std::vector<u32>> sbp;  // per branch: s B's rows of bt in rank pairs, its columns
  for (size_t t = 0; out != nullptr && t < s.r.size(); t++)
    sbp.push_back(rank_pairs(bt, N, s.r0[t], s.r[t], s.o0[t], s.w[t]));
  const u16* xp = reinterpret_cast<const u16*>(x);
  u16* hp = reinterpret_cast<u16*>(h);
  u16* op = reinterpret_cast<u16*>(out);
  in_row_blocks(m, d_in + (out != nullptr ? N : 0), [&] { return [&](auto rb, int64_t i) {
    constexpr int RB = decltype(rb)::value;
    in_blocks_of_4(0, R, [&](auto jb, int64_t j) {
      constexpr int JB = decltype(jb)::value;
      float d[RB * JB];
      dots<RB, JB>(xp + i * d_in, d_in, a16.data() + j * d_in, d_in, d_in, d);
      UNROLL for (int q = 0; q < RB; q++)
        UNROLL for (int jj = 0; jj < JB; jj++) {
          const c10::BFloat16 v(d[q * JB + jj]);
          h[(i + q) * R + j + jj] = v;
          if (h32 != nullptr) h32[(i + q) * r32 + j + jj] = v;
        }
    });
    u32 c[RB * kPairsMax];
    for (size_t t = 0; op != nullptr && t < s.r.size(); t++) {
      const int64_t np = pairs_of_rows<RB>(hp + i * R, R, s.r0[t], s.r[t], c);
      u16* o = op + i * N + s.o0[t];
      combine<RB>(o, c, np, sbp[t].data(), s.w[t], o, N);
    }
  }; });
#endif
}

void dp_lora_backward(const c10::BFloat16* g, const c10::BFloat16* h, const c10::BFloat16* x,
                      const LoraNode& s, const float* af, const float* bt, c10::BFloat16* dh,
                      c10::BFloat16* branch, float* d_a, float* d_bt) {
#ifndef TUNESMITH_DP
  TORCH_CHECK(false, "AVX512-BF16 dot products are not built here");
#else
  TORCH_CHECK(dp_lora_ready(), "this CPU has no AVX512-BF16");
  const int64_t m = s.m, d_in = s.d_in, R = s.R, N = s.N;
  const u16* gp = reinterpret_cast<const u16*>(g);
  const u16* xp = reinterpret_cast<const u16*>(x);
  u16* dhp = reinterpret_cast<u16*>(dh);
  u16* brp = reinterpret_cast<u16*>(branch);
  const auto sb16 = bf16_bits(bt, R * N);
  const auto ap = branch != nullptr ? rank_pairs(af, d_in, 0, R, 0, d_in) : std::vector<u32>();
  // Each row: dh = g (s B) per branch, rounded, then the branch's input gradient dh A.
  in_row_blocks(m, N + (branch != nullptr ? d_in : 0), [&] { return [&](auto rb, int64_t i) {
    constexpr int RB = decltype(rb)::value;
    for (size_t t = 0; t < s.r.size(); t++) {
      const int64_t o0 = s.o0[t], w = s.w[t];
      in_blocks_of_4(s.r0[t], s.r[t], [&](auto jb, int64_t j) {
        constexpr int JB = decltype(jb)::value;
        float d[RB * JB];
        dots<RB, JB>(gp + i * N + o0, N, sb16.data() + j * N + o0, N, w, d);
        UNROLL for (int q = 0; q < RB; q++)
          UNROLL for (int jj = 0; jj < JB; jj++)
            dh[(i + q) * R + j + jj] = c10::BFloat16(d[q * JB + jj]);
      });
    }
    if (brp != nullptr) {
      u32 c[RB * kPairsMax];
      const int64_t np = pairs_of_rows<RB>(dhp + i * R, R, 0, R, c);
      combine<RB>(nullptr, c, np, ap.data(), d_in, brp + i * d_in, d_in);
    }
  }; });
  // The sums over the rows, each (rank block, column block) whole on one thread.
  const int64_t np = (m + 1) / 2;
  const auto ht = column_pairs(reinterpret_cast<const u16*>(h), m, R);
  const auto dht = column_pairs(dhp, m, R);
  std::vector<Task> tasks;
  for (size_t t = 0; t < s.r.size(); t++)
    add_tasks(tasks, gp, N, ht.data(), np, s.r0[t], s.r[t], s.o0[t], s.w[t], d_bt, N);
  add_tasks(tasks, xp, d_in, dht.data(), np, 0, R, 0, d_in, d_a, d_in);
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; k++) run(tasks[k], m, np);
  });
#endif
}
