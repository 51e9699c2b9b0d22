// A frozen weight's bf16 products on AMX tiles: ``out (+)= a @ b`` with ``b`` a weight
// ``W^T`` (the forward ``x W^T``) or ``W`` (the input gradient ``g W``).
//
// oneDNN runs these products well on large squares but leaves time on a training step's
// shapes (a few hundred rows, K and N of 192-1536): on the 2-core AMX Xeon a
// (416, 576) x (576, 192) product took it 150 us where this kernel takes 67, a (480, 576) x
// (576, 576) one 251 against 205 (benchmarks/RESULTS.md, "The frozen products on AMX tiles").
// The scheme is the plainest AMX one: each thread takes a range of 32-column panels of ``b``
// and packs them into the tiles' pair-interleaved layout (a 16 x 16 transpose of pairs for
// ``W^T``, an interleave of two rows for ``W``): one panel at a time against all rows where a
// panel of ``W^T`` fits L1, else all of its range ahead where that fits 2 MiB (then rows go
// in passes of 64, two 32-row blocks per panel while it is in L1), else one at a time. Each 32-row block of ``a`` meets a panel with a 2 x 2
// block of accumulator tiles over the whole K; sums are fp32 (started from ``out`` when
// accumulating, and with a LoRA branch's low-rank extension where one is given) and rounded
// to bf16 once, as oneDNN's bf16 products round; an output over 1 MiB is written with
// non-temporal stores (kStreamBytes). No weight is kept
// packed between calls (that would be a second copy of every frozen weight). Where a product
// is faster this way is measured per shape on the machine (row_split.py), never assumed.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "amx.h"

namespace {

using bf16 = c10::BFloat16;

void check_operand(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kBFloat16 && t.dim() == 2,
              "amx_mm_: ", name, " must be a 2-D bf16 CPU tensor, got ", t.scalar_type(), " ",
              t.sizes());
}

#ifdef TUNESMITH_AMX
constexpr int64_t kPanel = 32;  // columns of b per panel: two 16-column tiles

// Panel layout: [2 column tiles][K / 32][16 k-pairs][16 columns][2] bf16, one tile per 1 KiB.
// From W (N x K rows, b = W^T): a tile's row r holds, per column c, W[c][2r], W[c][2r + 1],
// i.e. a 16 x 16 transpose of 32-bit pairs.
// A panel holds kbt K blocks per column tile (kbt - k_blocks of them the low-rank extension's).
AMX_TARGET void pack_transposed(const bf16* w, int64_t ldw, int64_t k_blocks, int64_t kbt, bf16* panel) {
  for (int half = 0; half < 2; half++)
    for (int64_t kb = 0; kb < k_blocks; kb++)
      tunesmith_amx::transpose16(w + half * 16 * ldw + kb * 32, ldw * 2, 16,
                                 panel + (half * kbt + kb) * 512, 64);
}

// From b itself (K rows, row stride ldb), panels [first, last) to dst (panel_elems apart): a
// tile's row r interleaves b's rows 2r and 2r + 1 element by element. Row by row across the
// panels, so that b's rows are read in order (panel by panel, each row's 64 bytes come from a
// new page: 1.3x oneDNN's time on a 576 x 1536 b).
AMX_TARGET void pack_plain(const bf16* b, int64_t ldb, int64_t k_blocks, int64_t kbt, int64_t first,
                           int64_t last, bf16* dst, int64_t panel_elems) {
  for (int64_t kb = 0; kb < k_blocks; kb++) {
    for (int r = 0; r < 16; r++) {
      const bf16* row = b + (kb * 32 + 2 * r) * ldb;
      for (int64_t q = first; q < last; q++) {
        bf16* panel = dst + (q - first) * panel_elems;
        __m512i lo, hi;
        tunesmith_amx::interleave_rows(_mm512_loadu_si512(row + q * 32),
                                       _mm512_loadu_si512(row + ldb + q * 32), lo, hi);
        _mm512_storeu_si512(panel + (kb * 16 + r) * 32, lo);
        _mm512_storeu_si512(panel + ((kbt + kb) * 16 + r) * 32, hi);
      }
    }
  }
}

// Rows [0, rows) of a 16 x 16 fp32 tile from / to bf16 (row stride ld): the start of a sum
// that accumulates into ``out``, and its one rounding.
AMX_TARGET void widen(const bf16* src, int64_t ld, int rows, float* tile) {
  for (int r = 0; r < rows; r++) {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + r * ld));
    _mm512_store_ps(tile + r * 16, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  }
}

// Rows [0, rows) of two side-by-side fp32 tiles (32 columns) rounded to bf16, one 64-byte store
// per row. ``stream``: non-temporal stores, which write the line without first reading its old
// contents from memory (see kStreamBytes).
AMX_TARGET void narrow(const float* left, const float* right, bf16* dst, int64_t ld, int rows,
                       bool stream) {
  for (int r = 0; r < rows; r++) {
    const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_load_ps(right + r * 16), _mm512_load_ps(left + r * 16));
    if (stream)
      _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + r * ld), v);
    else
      _mm512_storeu_si512(dst + r * ld, v);
  }
}

struct Product {
  const bf16* a;
  int64_t lda;
  const bf16* b;  // W (transposed: b = W^T) or b itself
  int64_t ldb;
  bool transposed;
  bf16* out;
  int64_t ldo;
  int64_t m, k, n;
  bool accumulate;
  bool stream;  // non-temporal stores of out (stream_out)
  // The low-rank extension a2 @ b2t^T (a2 (m, k2), b2t (n, k2), row-major; k2 = 0: none):
  // k2 more K steps over the same accumulators, so the sum is rounded once.
  const bf16* a2;
  const bf16* b2t;
  int64_t k2;
  int64_t panel_blocks() const { return (k + k2) / 32; }  // K blocks per column tile of a panel
};

// One K step of the 2 x 2 accumulator tiles: rows [0, 16) and [16, 32) of the A operand (row
// stride lda_bytes) against a column tile pair's K block.
AMX_TARGET inline void k_step(const bf16* a0, const bf16* a1, int64_t lda_bytes, const bf16* b0,
                              const bf16* b1) {
  _tile_loadd(4, a0, lda_bytes);
  _tile_loadd(6, b0, 64);
  _tile_dpbf16ps(0, 4, 6);
  _tile_loadd(7, b1, 64);
  _tile_dpbf16ps(1, 4, 7);
  _tile_loadd(5, a1, lda_bytes);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(3, 5, 7);
}

// One 32-row block (``rows`` <= 32 of them real; a short block's rows come from a zeroed copy)
// against one packed panel, into out's columns [n0, n0 + 32).
// a2: the block's rows of the extension's a2 (row stride p.k2).
AMX_TARGET void block(const Product& p, const bf16* a, int64_t lda, const bf16* a2, int rows,
                      int64_t row0, const bf16* panel, int64_t k_blocks, int64_t n0,
                      float (*acc)[256]) {
  const bf16* b0 = panel;
  const bf16* b1 = panel + p.panel_blocks() * 512;
  const int top = std::min(rows, 16), bottom = std::max(rows - 16, 0);
  if (p.accumulate) {
    bf16* o = p.out + row0 * p.ldo + n0;
    std::memset(acc, 0, 4 * 256 * sizeof(float));
    widen(o, p.ldo, top, acc[0]);
    widen(o + 16, p.ldo, top, acc[1]);
    widen(o + 16 * p.ldo, p.ldo, bottom, acc[2]);
    widen(o + 16 * p.ldo + 16, p.ldo, bottom, acc[3]);
    _tile_loadd(0, acc[0], 64);
    _tile_loadd(1, acc[1], 64);
    _tile_loadd(2, acc[2], 64);
    _tile_loadd(3, acc[3], 64);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t kb = 0; kb < k_blocks; kb++)
    k_step(a + kb * 32, a + 16 * lda + kb * 32, lda * 2, b0 + kb * 512, b1 + kb * 512);
  for (int64_t e = 0; e < p.k2; e += 32) {  // the extension's K blocks follow W's in the panel
    const int64_t kb = k_blocks + e / 32;
    k_step(a2 + e, a2 + 16 * p.k2 + e, p.k2 * 2, b0 + kb * 512, b1 + kb * 512);
  }
  _tile_stored(0, acc[0], 64);
  _tile_stored(1, acc[1], 64);
  _tile_stored(2, acc[2], 64);
  _tile_stored(3, acc[3], 64);
  bf16* o = p.out + row0 * p.ldo + n0;
  narrow(acc[0], acc[1], o, p.ldo, top, p.stream);
  narrow(acc[2], acc[3], o + 16 * p.ldo, p.ldo, bottom, p.stream);
}

// A thread packs its whole range of b's panels first where they fit this (reading W's rows
// once, in order: packing ``W`` panel by panel reads 64 bytes per row at a large stride, 1.3x
// oneDNN's time on a 576 x 1536 b), then runs blocks of rows against them. A panel of
// ``W^T`` is 32 whole rows of W, read in order either way: where it fits L1 it is packed just
// before all rows meet it (576 x 576 weights: 170-185 us against 210-213 packed ahead).
constexpr int64_t kPackedBytes = 2 << 20;
constexpr int64_t kL1PanelBytes = 40 << 10;
constexpr int64_t kRowsPerPass = 64;  // two 32-row blocks share each panel while it is in L1

// Panels [first, last) of b, panel_elems apart from dst.
AMX_TARGET void pack(const Product& p, int64_t first, int64_t last, int64_t k_blocks, bf16* dst,
                     int64_t panel_elems) {
  const int64_t kbt = p.panel_blocks();
  if (p.transposed) {
    for (int64_t q = first; q < last; q++)
      pack_transposed(p.b + q * kPanel * p.ldb, p.ldb, k_blocks, kbt, dst + (q - first) * panel_elems);
  } else {
    pack_plain(p.b, p.ldb, k_blocks, kbt, first, last, dst, panel_elems);
  }
  for (int64_t q = first; q < last && p.k2 > 0; q++)  // b2t's 32 rows of the panel, after W's
    pack_transposed(p.b2t + q * kPanel * p.k2, p.k2, p.k2 / 32, kbt,
                    dst + (q - first) * panel_elems + k_blocks * 512);
}

AMX_TARGET void panels(const Product& p, int64_t first, int64_t last) {
  tunesmith_amx::configure_tiles();
  const int64_t k_blocks = p.k / 32, panel_elems = 2 * p.panel_blocks() * 512;
  const bool in_l1 = p.transposed && panel_elems * 2 <= kL1PanelBytes;
  const bool whole = !in_l1 && (last - first) * panel_elems * 2 <= kPackedBytes;
  bf16* packed = static_cast<bf16*>(
      std::aligned_alloc(64, (whole ? last - first : 1) * panel_elems * sizeof(bf16)));
  const int64_t full = p.m / 32 * 32;
  bf16* tail = full < p.m  // the last rows of a (then of a2), zero-padded to 32
                   ? static_cast<bf16*>(std::aligned_alloc(64, 32 * (p.k + p.k2) * sizeof(bf16)))
                   : nullptr;
  if (packed == nullptr || (full < p.m && tail == nullptr)) {
    std::free(packed);
    std::free(tail);
    _tile_release();
    TORCH_CHECK(false, "amx_mm_: no memory for the packed panels");
  }
  if (whole) pack(p, first, last, k_blocks, packed, panel_elems);
  alignas(64) float acc[4][256];
  bf16* tail2 = tail == nullptr ? nullptr : tail + 32 * p.k;
  if (tail != nullptr) {
    std::memset(tail, 0, 32 * (p.k + p.k2) * sizeof(bf16));
    for (int64_t r = full; r < p.m; r++) {
      std::memcpy(tail + (r - full) * p.k, p.a + r * p.lda, p.k * sizeof(bf16));
      if (p.k2 > 0) std::memcpy(tail2 + (r - full) * p.k2, p.a2 + r * p.k2, p.k2 * sizeof(bf16));
    }
  }
  // Packed ahead, rows go in passes against all panels; else each panel, packed once, meets all rows.
  const int64_t step = whole ? kRowsPerPass : (p.m + 31) / 32 * 32;
  for (int64_t m0 = 0; m0 < p.m; m0 += step) {
    const int64_t m1 = std::min(p.m, m0 + step);
    for (int64_t q = first; q < last; q++) {
      const bf16* panel = packed + (whole ? (q - first) * panel_elems : 0);
      if (!whole) pack(p, q, q + 1, k_blocks, packed, panel_elems);
      for (int64_t r = m0; r + 32 <= m1; r += 32)
        block(p, p.a + r * p.lda, p.lda, p.k2 > 0 ? p.a2 + r * p.k2 : nullptr, 32, r, panel, k_blocks,
              q * kPanel, acc);
      if (tail != nullptr && m1 == p.m)
        block(p, tail, p.k, tail2, static_cast<int>(p.m - full), full, panel, k_blocks, q * kPanel, acc);
    }
  }
  if (p.stream) _mm_sfence();  // the non-temporal stores visible before the threads join
  std::free(packed);
  std::free(tail);
  _tile_release();
}

// In a training step the output of a frozen product is new memory that no cache holds: each
// line written the usual way is first read from memory. Where the output is larger than this,
// its lines are written non-temporally instead: a bench step's widest product, (480, 576) x
// (576, 1536), took 0.57 ms instead of 0.85-0.88 alone on cold memory, and the step was 4-6%
// faster, though the next op reads the output from memory; streaming the smaller outputs too
// (480 x 576, 0.55 MB, which the next op finds in cache) made the step 5% slower
// (benchmarks/RESULTS.md, "Frozen products' outputs written past the cache").
constexpr int64_t kStreamBytes = 1 << 20;

bool stream_out(const torch::Tensor& out, bool accumulate) {
  // A sum that starts from out has read its lines already; a stream needs 64-byte aligned rows.
  return !accumulate && out.numel() * 2 > kStreamBytes &&
         reinterpret_cast<uintptr_t>(out.data_ptr()) % 64 == 0 && out.stride(0) % 32 == 0;
}
#endif

bool amx_ready() {
#ifdef TUNESMITH_AMX
  return tunesmith_amx::ready();
#else
  return false;
#endif
}

// out (+)= a @ b [+ a2 @ b2t^T]. a: (m, k), b: (k, n) given as a view of W^T (W (n, k)
// row-major) or row-major itself; out: (m, n); each with unit column stride, k and n multiples
// of 32. The optional low-rank extension (a LoRA branch h (s B)^T with its rank padded to 32):
// a2 (m, k2) and b2t (n, k2), contiguous, k2 a multiple of 32; summed with the product in fp32
// and rounded once.
void amx_mm_(torch::Tensor out, torch::Tensor a, torch::Tensor b, bool accumulate,
             c10::optional<torch::Tensor> a2, c10::optional<torch::Tensor> b2t) {
  check_operand(out, "out");
  check_operand(a, "a");
  check_operand(b, "b");
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  TORCH_CHECK(b.size(0) == k && out.size(0) == m && out.size(1) == n, "amx_mm_: shapes ",
              a.sizes(), " @ ", b.sizes(), " -> ", out.sizes(), " do not match");
  TORCH_CHECK(k % 32 == 0 && n % 32 == 0, "amx_mm_: k and n must be multiples of 32, got ", k,
              " and ", n);
  TORCH_CHECK(a.stride(1) == 1 && out.stride(1) == 1, "amx_mm_: a and out need unit column stride");
  const bool transposed = b.stride(0) == 1 && b.stride(1) >= k;
  TORCH_CHECK(transposed || b.stride(1) == 1, "amx_mm_: b must be W^T of a row-major W, or row-major");
  TORCH_CHECK(a2.has_value() == b2t.has_value(), "amx_mm_: a2 and b2t go together");
  int64_t k2 = 0;
  if (a2.has_value()) {
    check_operand(*a2, "a2");
    check_operand(*b2t, "b2t");
    k2 = a2->size(1);
    TORCH_CHECK(k2 > 0 && k2 % 32 == 0 && a2->size(0) == m && b2t->size(0) == n && b2t->size(1) == k2 &&
                    a2->is_contiguous() && b2t->is_contiguous(),
                "amx_mm_: a2 must be contiguous (", m, ", k2) and b2t (", n, ", k2), k2 a multiple of 32; got ",
                a2->sizes(), " and ", b2t->sizes());
  }
  TORCH_CHECK(amx_ready(), "amx_mm_: this CPU or kernel gives no AMX bf16 tiles");
#ifdef TUNESMITH_AMX
  if (m == 0) return;
  const Product p{a.data_ptr<bf16>(), a.stride(0), b.data_ptr<bf16>(),
                  transposed ? b.stride(1) : b.stride(0), transposed, out.data_ptr<bf16>(),
                  out.stride(0), m, k, n, accumulate, stream_out(out, accumulate),
                  k2 > 0 ? a2->data_ptr<bf16>() : nullptr, k2 > 0 ? b2t->data_ptr<bf16>() : nullptr, k2};
  const int64_t count = n / kPanel;
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count));
  at::parallel_for(0, count, (count + threads - 1) / threads,
                   [&](int64_t first, int64_t last) { panels(p, first, last); });
#endif
}

}  // namespace

void register_amx_gemm(pybind11::module& m) {
  m.def("amx_ready", &amx_ready);
  m.def("amx_mm_", &amx_mm_, pybind11::arg("out"), pybind11::arg("a"), pybind11::arg("b"),
        pybind11::arg("accumulate"), pybind11::arg("a2") = pybind11::none(),
        pybind11::arg("b2t") = pybind11::none());
}
