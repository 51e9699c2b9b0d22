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

}  // namespace tunesmith_amx
#endif
