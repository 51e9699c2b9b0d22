// What tunesmith's AMX kernels (amx_gemm.cpp, amx_attention.cpp) share: whether this compiler
// and OS can build them, the target attribute their functions carry (so that every x86-64
// build compiles them, whatever its vector ISA flags; they run only where amx_ready() says),
// the tile configuration, and the permission Linux wants before a process touches tile data.
#pragma once

#include <cstdint>

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

}  // namespace tunesmith_amx
#endif
