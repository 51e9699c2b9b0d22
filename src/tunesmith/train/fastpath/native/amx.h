// What tunesmith's AMX kernels (amx_gemm.cpp, causal_attention.cpp, amx_head.cpp, amx_lora.cpp)
// share: whether this compiler and OS can build them, the target attribute their functions
// carry (so that every x86-64 build compiles them, whatever its vector ISA flags; their tile
// code runs only where amx_ready() says, causal_attention.cpp's dot products wherever the CPU
// has AVX512-BF16), the tile configuration, and the permission Linux wants before a process
// touches tile data.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>

#include <c10/util/BFloat16.h>

#if defined(__x86_64__) && defined(__linux__) && (defined(__clang__) || __GNUC__ >= 11)
#define TUNESMITH_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))

namespace tunesmith_amx {

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Eight tiles of 16 rows x 64 bytes (16 x 32 bf16, or 16 x 16 fp32): the only shape used.
AMX_TARGET inline void configure_tiles() {
  TileConfig config;
  for (int t = 0; t < 8; t++) {
    config.rows[t] = 16;
    config.colsb[t] = 64;
  }
  _tile_loadconfig(&config);
}

// The Linux AMX permission for this process (the kernel refuses tile data without it).
inline bool request_tiles() {
  static const bool granted = [] {
    constexpr long kReqPerm = 0x1023;  // ARCH_REQ_XCOMP_PERM
    constexpr long kTileData = 18;     // XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, kReqPerm, kTileData) == 0;
  }();
  return granted;
}

inline bool ready() { return __builtin_cpu_supports("avx512bf16") && request_tiles(); }

// The packing both kernels do into the tiles' pair layout, and the one rounding to bf16.

// dst's rows [0, 16) get the 32-bit columns of src's rows [0, rows) (16 words each, the rest
// read as zeros; strides in bytes): a 16 x 16 transpose in three rounds of shuffles.
AMX_TARGET inline void transpose16(const void* src, int64_t src_bytes, int64_t rows, void* dst,
                                   int64_t dst_bytes) {
  const char* s = static_cast<const char*>(src);
  char* d = static_cast<char*>(dst);
  __m512i r[16], t[16];
  for (int i = 0; i < 16; i++) r[i] = i < rows ? _mm512_loadu_si512(s + i * src_bytes) : _mm512_setzero_si512();
  for (int i = 0; i < 8; i++) {  // pairs of rows, per 128-bit lane
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 4; g++) {  // r[4g + c], lane L: rows 4g .. 4g + 3 of column 4L + c
    r[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    r[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    r[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    r[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  for (int c = 0; c < 4; c++) {  // column 4L + c gathers lane L of r[c], r[4 + c], r[8 + c], r[12 + c]
    const __m512i v = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x88), w = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xdd);
    const __m512i v2 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x88), w2 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xdd);
    _mm512_storeu_si512(d + c * dst_bytes, _mm512_shuffle_i32x4(v, v2, 0x88));
    _mm512_storeu_si512(d + (4 + c) * dst_bytes, _mm512_shuffle_i32x4(w, w2, 0x88));
    _mm512_storeu_si512(d + (8 + c) * dst_bytes, _mm512_shuffle_i32x4(v, v2, 0xdd));
    _mm512_storeu_si512(d + (12 + c) * dst_bytes, _mm512_shuffle_i32x4(w, w2, 0xdd));
  }
}

// Two rows of 32 16-bit elements interleaved element by element (a row pair of the tiles' B
// operand): elements 0-15 of each into lo, 16-31 into hi.
AMX_TARGET inline void interleave_rows(__m512i even, __m512i odd, __m512i& lo, __m512i& hi) {
  alignas(64) static const int16_t lo_idx[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                 8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i idx = _mm512_load_si512(lo_idx);
  lo = _mm512_permutex2var_epi16(even, idx, odd);
  hi = _mm512_permutex2var_epi16(even, _mm512_add_epi16(idx, _mm512_set1_epi16(16)), odd);
}

// 16 fp32 values rounded to bf16 (nearest even, as torch's conversion) at dst.
AMX_TARGET inline void store_bf16(void* dst, __m512 x) {
  _mm256_storeu_si256(static_cast<__m256i*>(dst), (__m256i)_mm512_cvtneps_pbh(x));
}

// A kernel's scratch buffer, 64-byte aligned: a tile row is then one cache line, not two
// (malloc gives 16 bytes).
template <typename T>
struct Aligned {
  T* ptr;
  explicit Aligned(int64_t n) : ptr(static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64))) {
    if (ptr == nullptr) throw std::bad_alloc();
  }
  ~Aligned() { std::free(ptr); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
  T* data() const { return ptr; }
};

// The products both kernels build on: their operands packed into the tiles' pair layouts,
// a 2 x 2-tile product, and the softmaxes' exp.
using bf16 = c10::BFloat16;

// The tiles' B operand of x^T, for x with n rows of k elements (k a multiple of 32): element
// (kk, j) of x^T is x[j][kk], stored [k/2][n_pad][2], i.e. a transpose of x's 32-bit pairs;
// rows of x from n to n_pad (a multiple of 16) are zeros.
AMX_TARGET inline void pack_pairs_transposed(const bf16* x, int64_t ld, int64_t n, int64_t k, int64_t n_pad,
                                      bf16* out) {
  for (int64_t j = 0; j < n_pad; j += 16)
    for (int64_t p = 0; p < k / 2; p += 16)  // 16 rows x 16 pairs -> 16 pair rows x 16 columns
      transpose16(x + j * ld + 2 * p, ld * 2, std::max<int64_t>(0, n - j), out + (p * n_pad + j) * 2,
                  n_pad * 4);
}

// The tiles' B operand of x itself (n rows of k elements, the rows summed over): stored
// [n_pad/2][k][2], rows 2t and 2t + 1 interleaved element by element; rows from n on are zeros.
AMX_TARGET inline void pack_row_pairs(const bf16* x, int64_t ld, int64_t n, int64_t k, int64_t n_pad,
                               bf16* out) {
  for (int64_t t = 0; t < n_pad / 2; t++) {
    bf16* o = out + t * 2 * k;
    for (int64_t e = 0; e < k; e += 32) {
      const __m512i even = 2 * t < n ? _mm512_loadu_si512(x + 2 * t * ld + e) : _mm512_setzero_si512();
      const __m512i odd = 2 * t + 1 < n ? _mm512_loadu_si512(x + (2 * t + 1) * ld + e) : _mm512_setzero_si512();
      __m512i lo, hi;
      interleave_rows(even, odd, lo, hi);
      _mm512_storeu_si512(o + 2 * e, lo);
      _mm512_storeu_si512(o + 2 * e + 32, hi);
    }
  }
}

// c (m x n fp32, row stride ldc) (+)= a (m x k bf16, row stride lda) times b (a packed B
// operand, ldb bf16 per pair row), with 2 x 2 accumulator tiles; m, n multiples of 32, k of 32.
AMX_TARGET inline void tile_mm(const bf16* a, int64_t lda, const bf16* b, int64_t ldb, float* c,
                        int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate) {
  for (int64_t i = 0; i < m; i += 32)
    for (int64_t j = 0; j < n; j += 32) {
      float* c0 = c + i * ldc + j;
      float* c1 = c0 + 16 * ldc;
      if (accumulate) {
        _tile_loadd(0, c0, ldc * 4);
        _tile_loadd(1, c0 + 16, ldc * 4);
        _tile_loadd(2, c1, ldc * 4);
        _tile_loadd(3, c1 + 16, ldc * 4);
      } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      for (int64_t kk = 0; kk < k; kk += 32) {
        const bf16* bk = b + kk / 2 * ldb + 2 * j;
        _tile_loadd(4, a + i * lda + kk, lda * 2);
        _tile_loadd(6, bk, ldb * 2);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(7, bk + 32, ldb * 2);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(5, a + (i + 16) * lda + kk, lda * 2);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, c0, ldc * 4);
      _tile_stored(1, c0 + 16, ldc * 4);
      _tile_stored(2, c1, ldc * 4);
      _tile_stored(3, c1 + 16, ldc * 4);
    }
}

// exp(x) for the softmax's x <= 0: Cephes' expf (range reduction by ln 2 in two parts, a
// degree-6 polynomial), within 2 ulp; an underflow gives 0, as std::exp does.
AMX_TARGET inline __m512 exp_ps(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

AMX_TARGET inline __mmask16 first(int64_t count) {  // lanes [0, count), count clamped to 16
  return count >= 16 ? __mmask16(0xffff) : __mmask16((1u << std::max<int64_t>(count, 0)) - 1);
}

}  // namespace tunesmith_amx
#endif
