// A LoRA node's backward rank-r products on AMX tiles: lora_backward's pass over the rows
// (kernels.cpp) where the CPU has them.
//
// The vector pass sums each row's products in fp32 FMAs, 2 R (d_out + d_in) a row each way,
// and is bound by them: on the demo's gate + up pair (R = 8, a 480 x 3072 gradient) 359 us,
// where reading its operands once takes 57 (benchmarks/RESULTS.md, "Where a bench step's time
// goes, and what the tiles could do"). Here the same four products are tile products with
// fp32 sums, the rank padded with zeros to 32 (to 16 where it fits, for the two whose rows it
// is): the tiles' work on the zeros costs less than the vector pass's FMAs.
//
//   dh = g (s B)          g's rows against s B, packed once (K = d_out)
//   branch = dh A         dh's rows against A, packed once (K = the rank)
//   d_a += dhᵀ x          per chunk of rows, x and g in row pairs against dhᵀ and hᵀ
//   d_bᵀ += hᵀ g          (K = the chunk's rows), summed per thread
//
// ``s B`` is block-diagonal (the node's branches), so dh's sums run over zeros off each
// branch's block, and d_bᵀ is summed whole and read on its blocks only: the same values as the
// vector pass's, summed in another order (within one bf16 rounding, test_native.py).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "amx.h"
#include "lora.h"

using bf16 = c10::BFloat16;

namespace {
#ifdef TUNESMITH_AMX

// Rows per chunk: the K of d_a's and d_bᵀ's tile products, so each load and store of their
// fp32 sums carries four K steps; a chunk's g in row pairs (128 x 1536 bf16 on the demo's gate
// or up, 384 KiB) stays in L2.
constexpr int64_t kChunk = 128;
constexpr int64_t kMaxRank = 64;  // kernels.cpp's limit on a node's ranks summed

struct Operands {
  const bf16 *g, *h, *x;
  int64_t m, n, d_in, r, rq, rt;  // rq: the rank padded to 32; rt: to 16 where it fits, else rq
  const bf16* sb;  // s B as the tiles' B operand, [n / 2][rq][2]
  const bf16* a;   // A in row pairs, [rq / 2][d_in][2]
  bf16* dh;
  bf16* branch;  // or nullptr
};

// At least n elements of T, 64-byte aligned, that this thread keeps between calls and for the
// process's life (one buffer per Slot; ~0.8 MiB a thread on the demo's gate): fresh pages each
// call would cost page faults on every call.
template <typename T, int Slot>
T* kept(int64_t n) {
  static thread_local std::vector<char> buffer;
  const size_t want = static_cast<size_t>(n) * sizeof(T) + 64;
  if (buffer.size() < want) buffer.resize(want);
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(buffer.data()) + 63) & ~uintptr_t(63));
}

// bf16 copies of n fp32 values that are bf16 values already (the kernels' rounded A and s B):
// their upper halves, exact, with no rounding to do.
void upper_halves(const float* src, int64_t n, bf16* dst) {
  uint16_t* out = reinterpret_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; i++) out[i] = lora::upper_half(src[i]);
}

// x's rows [0, rows) of r columns (row stride ld) transposed into (rq, k) bf16; zeros elsewhere.
void transpose_into(const bf16* x, int64_t ld, int64_t rows, int64_t r, int64_t rq, int64_t k,
                    bf16* out) {
  std::fill(out, out + rq * k, bf16(0.f));
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < r; j++) out[j * k + i] = x[i * ld + j];
}

// acc (16, width) fp32 += a_t (16, kc) bf16 times pairs (kc rows of width in row pairs, [kc / 2]
// [width][2]), kc <= 128: a_t's K blocks stay in tiles 4-7 while each 32 columns of acc are
// loaded, summed over the K blocks and stored once.
// (GCC's tile intrinsics are macros that paste the tile number into the instruction: a macro.)
#define TUNESMITH_K_BLOCK(A, b, ld_bytes) \
  do {                                     \
    _tile_loadd(2, (b), (ld_bytes));       \
    _tile_loadd(3, (b) + 32, (ld_bytes));  \
    _tile_dpbf16ps(0, A, 2);               \
    _tile_dpbf16ps(1, A, 3);               \
  } while (0)

AMX_TARGET void sums16(const bf16* a_t, int64_t kc, const bf16* pairs, int64_t width, float* acc) {
  const int64_t kb = kc / 32, lda = kc * 2, ldb = width * 4;
  _tile_loadd(4, a_t, lda);
  if (kb > 1) _tile_loadd(5, a_t + 32, lda);
  if (kb > 2) _tile_loadd(6, a_t + 64, lda);
  if (kb > 3) _tile_loadd(7, a_t + 96, lda);
  for (int64_t j = 0; j < width; j += 32) {
    _tile_loadd(0, acc + j, width * 4);
    _tile_loadd(1, acc + j + 16, width * 4);
    const bf16* b = pairs + 2 * j;
    TUNESMITH_K_BLOCK(4, b, ldb);
    if (kb > 1) TUNESMITH_K_BLOCK(5, b + 32 * width, ldb);
    if (kb > 2) TUNESMITH_K_BLOCK(6, b + 64 * width, ldb);
    if (kb > 3) TUNESMITH_K_BLOCK(7, b + 96 * width, ldb);
    _tile_stored(0, acc + j, width * 4);
    _tile_stored(1, acc + j + 16, width * 4);
  }
}

// acc (rt, width) += a_t (rt, kc) times pairs: in sums16's tiles where the rank fits 16 rows.
AMX_TARGET void transposed_sums(const bf16* a_t, int64_t rt, int64_t kc, const bf16* pairs,
                                int64_t width, float* acc) {
  if (rt == 16)
    sums16(a_t, kc, pairs, width, acc);
  else
    tunesmith_amx::tile_mm(a_t, kc, pairs, 2 * width, acc, width, rt, width, kc, true);
}

// One chunk of rows [c0, c0 + rows): dh and the branch rows written, the chunk's terms of d_a
// and d_bᵀ added into acc_a (rt, d_in) and acc_b (rt, n). g is packed into row pairs first: its
// rows are read from memory once, in order, and the products of dh then find them in L2.
AMX_TARGET void chunk(const Operands& p, int64_t c0, int64_t rows, bf16* g_pairs, bf16* x_pairs,
                      bf16* dh32, bf16* h_t, bf16* dh_t, bf16* g_tail, float* acc_a, float* acc_b) {
  const int64_t kc = (rows + 31) / 32 * 32, n = p.n, d_in = p.d_in, rq = p.rq, rt = p.rt, r = p.r;
  tunesmith_amx::pack_row_pairs(p.g + c0 * n, n, rows, n, kc, g_pairs);
  tunesmith_amx::pack_row_pairs(p.x + c0 * d_in, d_in, rows, d_in, kc, x_pairs);
  alignas(64) float acc[32 * kMaxRank];  // a block's dh (32, rq), or four tiles of the branch
  for (int64_t b = 0; b < kc; b += 32) {
    const int64_t real = std::min<int64_t>(32, rows - b), row0 = c0 + b;
    const bf16* g_rows = p.g + row0 * n;
    if (real < 32) {  // the last rows, zero-padded to a block
      std::memset(static_cast<void*>(g_tail), 0, 32 * n * sizeof(bf16));
      std::memcpy(static_cast<void*>(g_tail), g_rows, real * n * sizeof(bf16));
      g_rows = g_tail;
    }
    tunesmith_amx::tile_mm(g_rows, n, p.sb, 2 * rq, acc, rq, 32, rq, n, false);
    bf16* d32 = dh32 + b * rq;  // rounded once, as the vector pass rounds dh
    for (int64_t q = 0; q < 32 * rq; q++) d32[q] = bf16(acc[q]);
    for (int64_t q = 0; q < real; q++)
      std::memcpy(p.dh + (row0 + q) * r, d32 + q * rq, r * sizeof(bf16));
    if (p.branch == nullptr) continue;
    for (int64_t j = 0; j < d_in; j += 32) {  // branch = dh A, 32 columns at a time
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t e = 0; e < rq; e += 32) {
        const bf16* a_pairs = p.a + e * d_in + 2 * j;
        _tile_loadd(4, d32 + e, rq * 2);
        _tile_loadd(5, d32 + 16 * rq + e, rq * 2);
        _tile_loadd(6, a_pairs, d_in * 4);
        _tile_loadd(7, a_pairs + 32, d_in * 4);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, acc, 64);
      _tile_stored(1, acc + 256, 64);
      _tile_stored(2, acc + 512, 64);
      _tile_stored(3, acc + 768, 64);
      for (int64_t q = 0; q < real; q++) {  // rounded once, the rows that are real
        const float* left = acc + (q < 16 ? 0 : 512) + (q % 16) * 16;
        const float* right = left + 256;
        tunesmith_amx::store_bf16(p.branch + (row0 + q) * d_in + j, _mm512_load_ps(left));
        tunesmith_amx::store_bf16(p.branch + (row0 + q) * d_in + j + 16, _mm512_load_ps(right));
      }
    }
  }
  transpose_into(dh32, rq, rows, r, rt, kc, dh_t);
  transpose_into(p.h + c0 * r, r, rows, r, rt, kc, h_t);
  transposed_sums(dh_t, rt, kc, x_pairs, d_in, acc_a);
  transposed_sums(h_t, rt, kc, g_pairs, n, acc_b);
}

// Chunks [first, last): their sums added to this thread's part of ``partial`` (d_a (r, d_in),
// then d_bᵀ (r, n)), as the vector pass leaves them.
AMX_TARGET void chunks(const Operands& p, int64_t first, int64_t last, float* partial) {
  tunesmith_amx::configure_tiles();
  const int64_t n = p.n, d_in = p.d_in, rq = p.rq, rt = p.rt;
  const int64_t floats = rt * (d_in + n), halves = kChunk * (n + d_in + rq + 2 * rt) + 32 * n;
  float* acc_a = kept<float, 0>(floats + halves / 2);
  float* acc_b = acc_a + rt * d_in;
  bf16* g_pairs = reinterpret_cast<bf16*>(acc_b + rt * n);
  bf16 *x_pairs = g_pairs + kChunk * n, *dh32 = x_pairs + kChunk * d_in, *h_t = dh32 + kChunk * rq,
       *dh_t = h_t + rt * kChunk, *g_tail = dh_t + rt * kChunk;
  std::fill(acc_a, acc_a + floats, 0.f);
  for (int64_t c = first; c < last; c++) {
    const int64_t c0 = c * kChunk;
    chunk(p, c0, std::min(kChunk, p.m - c0), g_pairs, x_pairs, dh32, h_t, dh_t, g_tail, acc_a,
          acc_b);
  }
  _tile_release();
  float* part_b = partial + p.r * d_in;
  for (int64_t j = 0; j < p.r; j++) {
    for (int64_t e = 0; e < d_in; e++) partial[j * d_in + e] += acc_a[j * d_in + e];
    for (int64_t o = 0; o < n; o++) part_b[j * n + o] += acc_b[j * n + o];
  }
}
#endif

}  // namespace

// lora_backward's pass over the rows on tiles (see the top): g (m, n), h (m, r), x (m, d_in)
// bf16; bt (r, n) = (s B)ᵀ zero off its blocks and af (r, d_in) = A, fp32 with bf16 values;
// writes dh (m, r) and, where given, branch (m, d_in); adds each thread's sums to its part of
// partial (threads x per floats, per = r (d_in + n)). n and d_in multiples of 32.
void amx_lora_rows(const bf16* g, const bf16* h, const bf16* x, int64_t m, int64_t n, int64_t d_in,
                   int64_t r, const float* bt, const float* af, bf16* dh, bf16* branch,
                   float* partial, int64_t per) {
  TORCH_CHECK(n % 32 == 0 && d_in % 32 == 0, "lora_backward on tiles: the output and input widths ",
              "must be multiples of 32, got ", n, " and ", d_in);
#ifndef TUNESMITH_AMX
  TORCH_CHECK(false, "lora_backward on tiles: this build has no AMX code");
#else
  TORCH_CHECK(tunesmith_amx::ready(), "lora_backward on tiles: this CPU gives no AMX bf16 tiles");
  if (m == 0) return;

  const int64_t rq = (r + 31) / 32 * 32;
  bf16* sbt = kept<bf16, 1>(2 * rq * (n + d_in));  // s B and A, then both packed
  bf16 *a_rows = sbt + rq * n, *sb = a_rows + rq * d_in, *a = sb + rq * n;
  std::fill(sbt, sb, bf16(0.f));
  upper_halves(bt, r * n, sbt);
  upper_halves(af, r * d_in, a_rows);
  tunesmith_amx::pack_pairs_transposed(sbt, n, rq, n, rq, sb);
  tunesmith_amx::pack_row_pairs(a_rows, d_in, rq, d_in, rq, a);
  const Operands p{g, h, x, m, n, d_in, r, rq, r <= 16 ? 16 : rq, sb, a, dh, branch};


  at::parallel_for(0, (m + kChunk - 1) / kChunk, 1, [&](int64_t first, int64_t last) {
    chunks(p, first, last, partial + at::get_thread_num() * per);
  });

#endif
}
