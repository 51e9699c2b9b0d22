// Packed attention's causal attention (packed_attention.py's layout) in one pass each way,
// without the scores ever leaving the cache: on AMX tiles, or in AVX512-BF16 dot products on a
// CPU with those and no tiles.
//
// Through torch it is three batched products and a softmax: bmm(q, k^T) writes the scores,
// the softmax reads them and writes the probabilities, bmm(p, v) reads those; the backward
// writes and reads three more tensors of that size. Each is (blocks, g*L, L) bf16, larger than
// L2 for a training pass, so each product and each softmax pass streams it through memory,
// and oneDNN runs the small batched products far below the tiles' rate: on the 2-core AMX
// Xeon the bench step's attention took ~57 ms of a ~420 ms step (benchmarks/RESULTS.md, "Causal
// attention on AMX tiles"). Here each 32-query chunk of a block computes its scores into a
// cache-resident fp32 buffer, its causal softmax and its output; the backward recomputes the
// probabilities from the forward's row log-sum-exp (as flash attention does) and forms the
// gradients per chunk, the keys' and values' summed in fp32 over the chunks. Only the keys a
// chunk's queries see are computed, and no padding slot's: a block is padded to its longest
// example (a bench pass: 101 slots per group for examples of 68 tokens on average), and the
// chunks of padding only are skipped (attention 10-15% faster in the step, benchmarks/
// RESULTS.md "Reads prefetched ahead of the passes").
//
// The dot products (dot_mm) take the tiles' packed operands and give their results, in blocks
// of 8 rows instead of the tiles' 32, so they also skip what the causal mask zeroes inside a
// chunk (Causal): their chunks end at a group's end and at the last query, so that a chunk's
// slots are consecutive positions, and each block of 8 rows computes only the keys its queries
// see. oneDNN computes the full (g*L, L) squares; on the 2-core AMD EPYC (Zen 4) the demo
// step's attention ~90 -> ~41 ms (benchmarks/RESULTS.md, "Causal attention in AVX512-BF16 dot
// products").
//
// Layout (packed_attention.py): k and v are (blocks, L, d); a block has g*L query slots, slot r
// sees keys 0 .. r % L, and reads its query from the tokens' own rows (source[r], -1 for a
// padding slot), where its output and gradient go too. Values: the scores stay fp32 (torch rounds
// them to bf16 between its ops), the probabilities are rounded to bf16 for the product with v
// as torch's are, every product sums in fp32 and rounds once. So outputs and gradients are
// within a bf16 rounding or two of torch's, not equal bit for bit (test_fused_attention.py).
// Both paths compute the same values (each product is exact in fp32; sums in another order).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "amx.h"

namespace {

using bf16 = c10::BFloat16;
constexpr int64_t kChunk = 32;  // queries per chunk: two rows of tiles

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

void check_input(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kBFloat16 && t.dim() == 3 &&
                  t.is_contiguous(),
              "causal attention: ", name, " must be a contiguous 3-D bf16 CPU tensor");
}

#ifdef TUNESMITH_AMX
using namespace tunesmith_amx;  // amx.h: the tile setup, packing and exp both kernels use

// One query's probabilities over its n keys (zeros from n to width, a multiple of 16), as bf16
// into pb, and the log-sum-exp of its scaled scores: exp(scale * s[j] - m) / sum with m the
// row's scaled maximum (taken before the scale, which is positive).
AMX_TARGET float row_softmax(const float* s, int64_t n, int64_t width, float scale, float* e, bf16* pb) {
  __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < n; j += 16) vmax = _mm512_mask_max_ps(vmax, first(n - j), vmax, _mm512_loadu_ps(s + j));
  const float m = _mm512_reduce_max_ps(vmax) * scale;
  const __m512 sc = _mm512_set1_ps(scale), mx = _mm512_set1_ps(m);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __m512 x = _mm512_maskz_mov_ps(first(n - j), exp_ps(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), sc, mx)));
    _mm512_storeu_ps(e + j, x);
    sum = _mm512_add_ps(sum, x);
  }
  const float total = _mm512_reduce_add_ps(sum);
  const __m512 inv = _mm512_set1_ps(1.f / total);
  int64_t j = 0;
  for (; j < n; j += 16) store_bf16(pb + j, _mm512_mul_ps(_mm512_loadu_ps(e + j), inv));
  for (; j < width; j += 16) store_bf16(pb + j, _mm512_setzero_ps());
  return m + std::log(total);
}

// The backward's probabilities exp(scale * s[j] - lse) of one query's row, fp32 into pf (zeros
// from n to width, a multiple of 16).
AMX_TARGET void row_probs(const float* s, int64_t n, int64_t width, float scale, float lse, float* pf) {
  const __m512 sc = _mm512_set1_ps(scale), l = _mm512_set1_ps(lse);
  int64_t j = 0;
  for (; j < n; j += 16)
    _mm512_storeu_ps(pf + j, _mm512_maskz_mov_ps(first(n - j), exp_ps(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), sc, l))));
  for (; j < width; j += 16) _mm512_storeu_ps(pf + j, _mm512_setzero_ps());
}

// Rows [0, rows) of a (32 x width) fp32 buffer to bf16 rows of dst (row stride ld).
AMX_TARGET void narrow_rows(const float* src, int64_t lds, int64_t rows, int64_t width, bf16* dst,
                            int64_t ld) {
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < width; j += 16) store_bf16(dst + i * ld + j, _mm512_loadu_ps(src + i * lds + j));
}

// The queries, their output and its gradient are the tokens' own rows (one per token and head,
// as the projections give them): source[r] is the row of a block's query slot r, -1 for a
// padding slot. Reading them through it saves the layout's copies of q and of the output, each
// way (packed_attention.py).
struct Rows {
  const int64_t* source;  // this block's slots
  int64_t d;
  // Slots [c0, end) of x's rows into the 32 rows of pad, zeros for padding slots and past end.
  void gather(const bf16* x, int64_t c0, int64_t end, bf16* pad) const {
    for (int64_t i = 0; i < kChunk; i++) {
      const int64_t row = c0 + i < end ? source[c0 + i] : -1;
      if (row < 0)
        std::memset(pad + i * d, 0, d * sizeof(bf16));
      else
        std::memcpy(pad + i * d, x + row * d, d * sizeof(bf16));
    }
  }
  // Slots [c0, c0 + 32)'s rows of x into the cache while the chunk before them is computed:
  // scattered rows, which the hardware prefetchers do not foresee (kernels.cpp's ahead()).
  void ahead(const bf16* x, int64_t c0, int64_t total) const {
    for (int64_t i = c0; i < std::min(c0 + kChunk, total); i++)
      if (source[i] >= 0)
        for (int64_t e = 0; e < d; e += 32) __builtin_prefetch(x + source[i] * d + e, 0, 3);
  }
  // The keys that slots [c0, c0 + n)'s queries see (one past the last position among the
  // slots that hold a query; 0: none does). Padding slots see nothing: a block is padded to
  // its longest example, so a chunk of padding only costs no work, and one that ends in
  // padding or crosses into the next query group computes only the keys its queries see.
  int64_t top(int64_t c0, int64_t n, int64_t keys) const {
    int64_t t = 0;
    for (int64_t i = c0; i < c0 + n; i++)
      if (source[i] >= 0) t = std::max(t, i % keys + 1);
    return t;
  }
  bool query(int64_t slot) const { return source[slot] >= 0; }
  // Rows [0, n) of a (32 x d) fp32 buffer to the rows of slots [c0, c0 + n) in dst, rounded.
  AMX_TARGET void scatter(const float* src, int64_t c0, int64_t n, bf16* dst) const {
    for (int64_t i = 0; i < n; i++) {
      const int64_t row = source[c0 + i];
      if (row >= 0) narrow_rows(src + i * d, d, 1, d, dst + row * d, d);
    }
  }
};

// The part of a product that a block of 8 rows needs, where a chunk's query slots hold the
// consecutive positions first .. first + n - 1 of one group (the dot products' chunks do not
// cross a group's end): the rest of its columns or sums are the masked scores' zeros.
struct Causal {
  enum Kind {
    kAll,      // every column and sum (the tiles' products)
    kScores,   // rows: queries, columns: keys; a row sees the keys up to its own position
    kOverKeys, // rows: queries, summed over keys (p v, dS k): those up to the rows' positions
    kOverQueries,  // rows: keys, summed over the chunk's queries (p^T dO, dS^T q): those at or
                   // past the key's position
  } kind = kAll;
  int64_t first = 0, n = 0;

  // Columns [0, cols) and sums over [k0, k1) of rows [i, i + 8), from the product's n and k.
  void of(int64_t i, int64_t n_cols, int64_t k, int64_t& cols, int64_t& k0, int64_t& k1) const {
    const int64_t seen = std::min(first + i + 8, first + n);  // the rows' last key, plus one
    cols = kind == kScores ? std::min(n_cols, seen) : n_cols;
    k0 = kind == kOverQueries ? std::max<int64_t>(0, i - first) / 2 * 2 : 0;
    k1 = kind == kOverKeys ? std::min(k, round_up(seen, 2))
         : kind == kOverQueries ? std::min(k, round_up(n, 2)) : k;
  }
};

// One block of dot_mm: 8 rows x 16 * V columns of c, from ci, (+)= the sums over pairs
// [k0, k1) of a's rows (from ai) times b's pair rows (from bj). 8 * V sums in registers; each
// step broadcasts a row's pair of a and multiplies it into V vectors of b's pair row.
template <int V>
AMX_TARGET void dot_block(const bf16* ai, int64_t lda, const bf16* bj, int64_t ldb, float* ci,
                          int64_t ldc, int64_t k0, int64_t k1, bool accumulate) {
  constexpr int kRows = 8;
  __m512 acc[kRows][V];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; r++)
#pragma GCC unroll 2
    for (int v = 0; v < V; v++)
      acc[r][v] = accumulate ? _mm512_loadu_ps(ci + r * ldc + 16 * v) : _mm512_setzero_ps();
  for (int64_t p = k0 / 2; p < k1 / 2; p++) {
    __m512bh bv[V];
#pragma GCC unroll 2
    for (int v = 0; v < V; v++) bv[v] = (__m512bh)_mm512_loadu_si512(bj + p * ldb + 32 * v);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; r++) {
      int32_t pair;
      std::memcpy(&pair, ai + r * lda + 2 * p, sizeof pair);
      const __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 2
      for (int v = 0; v < V; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], x, bv[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; r++)
#pragma GCC unroll 2
    for (int v = 0; v < V; v++) _mm512_storeu_ps(ci + r * ldc + 16 * v, acc[r][v]);
}

// c (m x n fp32, row stride ldc) (+)= a (m x k bf16, row stride lda) times b (tile_mm's packed
// B operand), in AVX512-BF16 dot products: tile_mm's operands and result on a CPU without AMX,
// computing only what `causal` says the rows need (the columns past a block's are written 0
// unless accumulating). Blocks of 8 rows x 32 columns, or 16 where the scores' last 16 columns
// are unseen. m a multiple of 8, n of 32, k even.
AMX_TARGET void dot_mm(const bf16* a, int64_t lda, const bf16* b, int64_t ldb, float* c,
                       int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate,
                       const Causal& causal) {
  constexpr int kRows = 8;
  for (int64_t i = 0; i < m; i += kRows) {
    int64_t cols, k0, k1;
    causal.of(i, n, k, cols, k0, k1);
    const bf16* ai = a + i * lda;
    for (int64_t j = 0; j < n; j += 32) {
      float* ci = c + i * ldc + j;
      const bool none = j >= cols || k0 >= k1, half = !none && cols - j <= 16 && !accumulate;
      if (none || half) {  // nothing to add (zeros, or the sums as they are), or 16 columns
        if (!accumulate)
          for (int r = 0; r < kRows; r++)
            std::memset(ci + r * ldc + (half ? 16 : 0), 0, (half ? 16 : 32) * sizeof(float));
        if (half) dot_block<1>(ai, lda, b + 2 * j, ldb, ci, ldc, k0, k1, false);
        continue;
      }
      dot_block<2>(ai, lda, b + 2 * j, ldb, ci, ldc, k0, k1, accumulate);
    }
  }
}

struct Block {
  int64_t blocks;         // K/V heads of the layout's examples
  int64_t rows, keys, d;  // g*L queries, L keys, head width
  int64_t keys_pad;       // L rounded up to 32
  float scale;
  bool tiles;             // the products on AMX tiles, else in AVX512-BF16 dot products

  // The slots of the chunk from c0: 32, fewer at the block's end; the dot products' chunks
  // also end at their group's end, so that their slots hold consecutive positions (Causal).
  int64_t chunk(int64_t c0) const {
    const int64_t n = std::min(kChunk, rows - c0);
    return tiles ? n : std::min(n, keys - c0 % keys);
  }
  // The slots a chunk of n computes: all; in dot products those up to the last that holds a
  // query (top: its key's position plus one), as an example's padding slots follow its last
  // token. And the rows its products take: the tiles' 32, or the live slots in blocks of 8.
  int64_t live(int64_t c0, int64_t n, int64_t top) const { return tiles ? n : top - c0 % keys; }
  int64_t height(int64_t live) const { return tiles ? kChunk : round_up(live, 8); }
  AMX_TARGET void mm(const bf16* a, int64_t lda, const bf16* b, int64_t ldb, float* c, int64_t ldc,
                     int64_t m, int64_t n, int64_t k, bool accumulate, Causal causal) const {
    if (tiles)
      tile_mm(a, lda, b, ldb, c, ldc, m, n, k, accumulate);
    else
      dot_mm(a, lda, b, ldb, c, ldc, m, n, k, accumulate, causal);
  }
};

// A thread's buffers for the blocks it takes (all in cache for a training pass's blocks).
struct ForwardScratch {
  Aligned<bf16> kt, vv, qpad, p;
  Aligned<float> s, o, e;
  ForwardScratch(int64_t lp, int64_t d)
      : kt(d * lp), vv(lp * d), qpad(kChunk * d), p(kChunk * lp), s(kChunk * lp), o(kChunk * d), e(lp) {}
};

AMX_TARGET void forward_block(const Block& b, const Rows& slots, const bf16* q, const bf16* k,
                              const bf16* v, bf16* out, float* lse, ForwardScratch& w) {
  const int64_t d = b.d, lp = b.keys_pad;
  auto& [kt, vv, qpad, p, s, o, e] = w;
  pack_pairs_transposed(k, d, b.keys, d, lp, kt.data());
  pack_row_pairs(v, d, b.keys, d, lp, vv.data());
  for (int64_t c0 = 0, n = 0; c0 < b.rows; c0 += n) {
    n = b.chunk(c0);
    const int64_t top = slots.top(c0, n, b.keys), first = c0 % b.keys;
    if (top == 0) {  // padding slots only: no output, an lse of 0
      std::fill_n(lse + c0, n, 0.f);
      continue;
    }
    const int64_t live = b.live(c0, n, top), m = b.height(live);
    const int64_t kc = round_up(top, 32);
    slots.gather(q, c0, c0 + n, qpad.data());
    slots.ahead(q, c0 + n, b.rows);
    b.mm(qpad.data(), d, kt.data(), 2 * lp, s.data(), lp, m, kc, d, false,
         {Causal::kScores, first, live});
    for (int64_t i = 0; i < kChunk; i++) {
      bf16* pi = p.data() + i * lp;
      if (i >= n || !slots.query(c0 + i)) {  // past the block, or a padding slot (lse 0)
        std::memset(pi, 0, kc * sizeof(bf16));
        if (i < n) lse[c0 + i] = 0.f;
        continue;
      }
      lse[c0 + i] = row_softmax(s.data() + i * lp, (c0 + i) % b.keys + 1, kc, b.scale, e.data(), pi);
    }
    b.mm(p.data(), lp, vv.data(), 2 * d, o.data(), d, m, d, kc, false,
         {Causal::kOverKeys, first, live});
    slots.scatter(o.data(), c0, n, out);
  }
}

// The backward per chunk: the probabilities again from the forward's lse, each query's
// D = sum(p * dp) and dS = scale * p * (dp - D) row by row (fp32), the queries' gradient dS k;
// then p and dS transposed (32-bit transposes of the fp32 rows, so both orientations hold the
// same values) as the key-major A operands of the keys' and values' gradients dS^T q and
// p^T dO, summed over the chunks in fp32.
struct BackwardScratch {
  Aligned<bf16> kt, vt, kv, qpad, dpad, qv, dv2, ds, pT, dsT;
  Aligned<float> s, dp, pf, dsf, tf, o, dk_acc, dv_acc;
  BackwardScratch(int64_t lp, int64_t d)
      : kt(d * lp), vt(d * lp), kv(lp * d), qpad(kChunk * d), dpad(kChunk * d), qv(kChunk * d),
        dv2(kChunk * d), ds(kChunk * lp), pT(lp * kChunk), dsT(lp * kChunk), s(kChunk * lp),
        dp(kChunk * lp), pf(kChunk * lp), dsf(kChunk * lp), tf(lp * kChunk), o(kChunk * d),
        dk_acc(lp * d), dv_acc(lp * d) {}
};

// The first kc columns of a (32 x kc) fp32 buffer (row stride ld) as a (kc x 32) bf16 one.
AMX_TARGET void transpose_chunk(const float* src, int64_t ld, int64_t kc, float* tmp, bf16* dst) {
  for (int64_t j = 0; j < kc; j += 16)
    for (int64_t i = 0; i < kChunk; i += 16)
      transpose16(src + i * ld + j, ld * 4, 16, tmp + j * kChunk + i, kChunk * 4);
  for (int64_t e = 0; e < kc * kChunk; e += 16) store_bf16(dst + e, _mm512_loadu_ps(tmp + e));
}

AMX_TARGET void backward_block(const Block& b, const Rows& slots, const bf16* dout, const bf16* q,
                               const bf16* k, const bf16* v, const float* lse, bf16* dq, bf16* dk,
                               bf16* dv, BackwardScratch& w) {
  const int64_t d = b.d, lp = b.keys_pad;
  auto& [kt, vt, kv, qpad, dpad, qv, dv2, ds, pT, dsT, s, dp, pf, dsf, tf, o, dk_acc, dv_acc] = w;
  std::fill_n(dk_acc.data(), lp * d, 0.f);
  std::fill_n(dv_acc.data(), lp * d, 0.f);
  pack_pairs_transposed(k, d, b.keys, d, lp, kt.data());
  pack_pairs_transposed(v, d, b.keys, d, lp, vt.data());
  pack_row_pairs(k, d, b.keys, d, lp, kv.data());
  const __m512 sc = _mm512_set1_ps(b.scale);
  for (int64_t c0 = 0, n = 0; c0 < b.rows; c0 += n) {
    n = b.chunk(c0);
    const int64_t top = slots.top(c0, n, b.keys), first = c0 % b.keys;
    if (top == 0) continue;  // padding slots only: no gradient to add anywhere
    const int64_t live = b.live(c0, n, top), m = b.height(live);
    const int64_t kc = round_up(top, 32);
    slots.gather(q, c0, c0 + n, qpad.data());
    slots.gather(dout, c0, c0 + n, dpad.data());
    slots.ahead(q, c0 + n, b.rows);
    slots.ahead(dout, c0 + n, b.rows);
    const bf16* qc = qpad.data();
    const bf16* dc = dpad.data();
    const Causal scores{Causal::kScores, first, live};
    b.mm(qc, d, kt.data(), 2 * lp, s.data(), lp, m, kc, d, false, scores);
    b.mm(dc, d, vt.data(), 2 * lp, dp.data(), lp, m, kc, d, false, scores);
    for (int64_t i = 0; i < kChunk; i++) {
      float* pi = pf.data() + i * lp;
      float* gi = dsf.data() + i * lp;
      bf16* dsi = ds.data() + i * lp;
      if (i >= n || !slots.query(c0 + i)) {  // past the block, or a padding slot: nothing
        std::memset(pi, 0, kc * sizeof(float));
        std::memset(gi, 0, kc * sizeof(float));
        std::memset(dsi, 0, kc * sizeof(bf16));
        continue;
      }
      const float* dpi = dp.data() + i * lp;
      row_probs(s.data() + i * lp, (c0 + i) % b.keys + 1, kc, b.scale, lse[c0 + i], pi);
      __m512 acc = _mm512_setzero_ps();
      for (int64_t j = 0; j < kc; j += 16)  // p is 0 past the row's keys
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(pi + j), _mm512_loadu_ps(dpi + j), acc);
      const __m512 dd = _mm512_set1_ps(_mm512_reduce_add_ps(acc));
      for (int64_t j = 0; j < kc; j += 16) {
        const __m512 g = _mm512_mul_ps(sc, _mm512_mul_ps(_mm512_loadu_ps(pi + j),
                                                         _mm512_sub_ps(_mm512_loadu_ps(dpi + j), dd)));
        _mm512_storeu_ps(gi + j, g);
        store_bf16(dsi + j, g);
      }
    }
    b.mm(ds.data(), lp, kv.data(), 2 * d, o.data(), d, m, d, kc, false,
         {Causal::kOverKeys, first, live});
    slots.scatter(o.data(), c0, n, dq);
    transpose_chunk(pf.data(), lp, kc, tf.data(), pT.data());
    transpose_chunk(dsf.data(), lp, kc, tf.data(), dsT.data());
    pack_row_pairs(qc, d, kChunk, d, kChunk, qv.data());
    pack_row_pairs(dc, d, kChunk, d, kChunk, dv2.data());
    const Causal queries{Causal::kOverQueries, first, live};
    b.mm(pT.data(), kChunk, dv2.data(), 2 * d, dv_acc.data(), d, kc, d, kChunk, true, queries);
    b.mm(dsT.data(), kChunk, qv.data(), 2 * d, dk_acc.data(), d, kc, d, kChunk, true, queries);
  }
  for (int64_t j = 0; j < b.keys; j++)
    for (int64_t e = 0; e < d; e += 16) {
      store_bf16(dk + j * d + e, _mm512_loadu_ps(dk_acc.data() + j * d + e));
      store_bf16(dv + j * d + e, _mm512_loadu_ps(dv_acc.data() + j * d + e));
    }
}

// fn() on each of the pool's threads (fewer for fewer blocks), each taking the blocks one at a
// time from a shared counter: the layout's examples differ in length and so its blocks in work
// (a block's padding chunks are skipped), which an even split of their count would not balance.
template <typename Fn>
void in_threads(const Block& b, Fn fn) {
  at::parallel_for(0, std::min<int64_t>(b.blocks, at::get_num_threads()), 1,
                   [&](int64_t, int64_t) { fn(); });
}

AMX_TARGET void forward_blocks(const Block& b, const torch::Tensor& q, const torch::Tensor& source,
                               const torch::Tensor& k, const torch::Tensor& v, torch::Tensor& out,
                               torch::Tensor& lse, std::atomic<int64_t>& next) {
  if (b.tiles) tunesmith_amx::configure_tiles();
  ForwardScratch w(b.keys_pad, b.d);
  for (int64_t i = next++; i < b.blocks; i = next++) {
    const Rows slots{source.data_ptr<int64_t>() + i * b.rows, b.d};
    forward_block(b, slots, q.data_ptr<bf16>(), k.data_ptr<bf16>() + i * b.keys * b.d,
                  v.data_ptr<bf16>() + i * b.keys * b.d, out.data_ptr<bf16>(),
                  lse.data_ptr<float>() + i * b.rows, w);
  }
  if (b.tiles) _tile_release();
}

AMX_TARGET void backward_blocks(const Block& b, const torch::Tensor& dout, const torch::Tensor& q,
                                const torch::Tensor& source, const torch::Tensor& k,
                                const torch::Tensor& v, const torch::Tensor& lse, torch::Tensor& dq,
                                torch::Tensor& dk, torch::Tensor& dv, std::atomic<int64_t>& next) {
  if (b.tiles) tunesmith_amx::configure_tiles();
  BackwardScratch w(b.keys_pad, b.d);
  for (int64_t i = next++; i < b.blocks; i = next++) {
    const int64_t ko = i * b.keys * b.d;
    const Rows slots{source.data_ptr<int64_t>() + i * b.rows, b.d};
    backward_block(b, slots, dout.data_ptr<bf16>(), q.data_ptr<bf16>(), k.data_ptr<bf16>() + ko,
                   v.data_ptr<bf16>() + ko, lse.data_ptr<float>() + i * b.rows, dq.data_ptr<bf16>(),
                   dk.data_ptr<bf16>() + ko, dv.data_ptr<bf16>() + ko, w);
  }
  if (b.tiles) _tile_release();
}
#endif

void check_rows(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kBFloat16 && t.dim() == 2 &&
                  t.is_contiguous(),
              "causal attention: ", name, " must be contiguous 2-D bf16 CPU rows");
}

// q: (tokens, d) rows; source: (blocks * g*L) int64, each slot's row of q or -1, every row of q
// in exactly one slot (packed_attention.PackedLayout.q_source); k, v: (blocks, L, d).
Block describe(const torch::Tensor& q, const torch::Tensor& source, const torch::Tensor& k,
               const torch::Tensor& v, double scale, bool tiles) {
  check_rows(q, "q");
  check_input(k, "k");
  check_input(v, "v");
  TORCH_CHECK(source.device().is_cpu() && source.scalar_type() == at::kLong && source.dim() == 1 &&
                  source.is_contiguous(),
              "causal attention: source must be a contiguous 1-D int64 CPU tensor");
  const int64_t blocks = k.size(0), keys = k.size(1), d = k.size(2);
  TORCH_CHECK(k.sizes() == v.sizes() && q.size(1) == d, "causal attention: q ", q.sizes(),
              ", k ", k.sizes(), ", v ", v.sizes(), " do not match");
  TORCH_CHECK(keys > 0 && blocks > 0 && source.size(0) % (blocks * keys) == 0,
              "causal attention: the slots (", source.size(0), ") must be whole groups of the ",
              keys, " key slots in each of ", blocks, " blocks");
  const int64_t* src = source.data_ptr<int64_t>();
  int64_t placed = 0;
  for (int64_t r = 0; r < source.size(0); r++) {
    TORCH_CHECK(src[r] >= -1 && src[r] < q.size(0), "causal attention: slot ", r,
                " reads row ", src[r], " of ", q.size(0));
    placed += src[r] >= 0;
  }
  TORCH_CHECK(placed == q.size(0), "causal attention: ", placed, " slots for ", q.size(0),
              " rows of q: each row must have one slot");
  TORCH_CHECK(d % 32 == 0, "causal attention: the head width must be a multiple of 32, got ", d);
  TORCH_CHECK(scale > 0, "causal attention: the scale must be positive");
#ifdef TUNESMITH_AMX
  if (tiles) {
    TORCH_CHECK(tunesmith_amx::ready(),
                "causal attention: this CPU or kernel gives no AMX bf16 tiles");
  } else {
    TORCH_CHECK(__builtin_cpu_supports("avx512bf16"),
                "causal attention: this CPU has no AVX512-BF16");
  }
#else
  TORCH_CHECK(false,
              "causal attention: built without its x86-64 code (needs Linux, GCC 11 or clang)");
#endif
  return Block{blocks, source.size(0) / blocks, keys, d, round_up(keys, 32),
               static_cast<float>(scale), tiles};
}

// (out, lse): out, q's shape, each row its query's output; lse (blocks, g*L) fp32, the
// log-sum-exp of each slot's scaled scores, which the backward recomputes the probabilities from
// (0 for a padding slot: it has no query).
// tiles: on AMX tiles, else in AVX512-BF16 dot products (the same values either way).
std::vector<torch::Tensor> causal_attention(torch::Tensor q, torch::Tensor source, torch::Tensor k,
                                            torch::Tensor v, double scale, bool tiles) {
  const Block b = describe(q, source, k, v, scale, tiles);
  auto out = torch::empty_like(q);
  auto lse = torch::empty({k.size(0), b.rows}, q.options().dtype(at::kFloat));
#ifdef TUNESMITH_AMX
  std::atomic<int64_t> next{0};
  in_threads(b, [&] { forward_blocks(b, q, source, k, v, out, lse, next); });
#endif
  return {out, lse};
}

// (dq, dk, dv) from the output's gradient (q's shape) and the forward's inputs and lse.
std::vector<torch::Tensor> causal_attention_backward(torch::Tensor dout, torch::Tensor q,
                                                     torch::Tensor source, torch::Tensor k,
                                                     torch::Tensor v, torch::Tensor lse,
                                                     double scale, bool tiles) {
  const Block b = describe(q, source, k, v, scale, tiles);
  check_rows(dout, "grad");
  TORCH_CHECK(dout.sizes() == q.sizes(), "causal attention: grad ", dout.sizes(), " is not q's ", q.sizes());
  TORCH_CHECK(lse.device().is_cpu() && lse.scalar_type() == at::kFloat && lse.is_contiguous() &&
                  lse.dim() == 2 && lse.size(0) == k.size(0) && lse.size(1) == b.rows,
              "causal attention: lse must be the forward's (blocks, rows) fp32 tensor");
  auto dq = torch::empty_like(q), dk = torch::empty_like(k), dv = torch::empty_like(v);
#ifdef TUNESMITH_AMX
  std::atomic<int64_t> next{0};
  in_threads(b, [&] { backward_blocks(b, dout, q, source, k, v, lse, dq, dk, dv, next); });
#endif
  return {dq, dk, dv};
}

}  // namespace

void register_causal_attention(pybind11::module& m) {
  using pybind11::arg;
  m.def("causal_attention", &causal_attention, arg("q"), arg("source"), arg("k"), arg("v"),
        arg("scale"), arg("tiles"));
  m.def("causal_attention_backward", &causal_attention_backward, arg("dout"), arg("q"),
        arg("source"), arg("k"), arg("v"), arg("lse"), arg("scale"), arg("tiles"));
}
