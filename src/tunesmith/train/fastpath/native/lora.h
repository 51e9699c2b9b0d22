// What kernels.cpp's LoRA kernels and dp_lora.cpp share: a node's shape, the walks over its
// rows and ranks in blocks, and dp_lora.cpp's entry points (the rank-r products in AVX512-BF16
// dot products, where the CPU has them).
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace lora {

// The bf16 bits of a float that holds a bf16 value (the kernels' rounded A and s B): its upper
// half, exact, with no rounding to do.
inline uint16_t upper_half(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return static_cast<uint16_t>(bits >> 16);
}

constexpr int kRows = 4;  // rows per block: each A and s B vector loaded once per four rows
constexpr int64_t kGrain = 16384;  // elements per task (ATen's own kernels take 32768)

// fn(std::integral_constant<int, JB>, j) over [j0, j0 + r) in blocks of 4, then one at a time.
template <typename Fn>
inline void in_blocks_of_4(int64_t j0, int64_t r, Fn fn) {
  int64_t j = j0;
  for (; j + 4 <= j0 + r; j += 4) fn(std::integral_constant<int, 4>(), j);
  for (; j < j0 + r; j++) fn(std::integral_constant<int, 1>(), j);
}

// m rows of `width` elements in blocks of kRows over the thread pool: each task calls
// rows_of_task() once for its function fn, then fn(std::integral_constant<int, RB>, i) per
// block (the last block's rows one at a time where m is not a multiple of kRows).
template <typename Task>
inline void in_row_blocks(int64_t m, int64_t width, Task rows_of_task) {
  at::parallel_for(0, (m + kRows - 1) / kRows, std::max<int64_t>(1, kGrain / (kRows * width)),
                   [&](int64_t lo, int64_t hi) {
    auto fn = rows_of_task();
    for (int64_t blk = lo; blk < hi; blk++) {
      const int64_t i = blk * kRows;
      if (i + kRows <= m) {
        fn(std::integral_constant<int, kRows>(), i);
      } else {
        for (int64_t ii = i; ii < m; ii++) fn(std::integral_constant<int, 1>(), ii);
      }
    }
  });
}

}  // namespace lora

// A node as kernels.cpp's Branches lays it out: m rows of d_in inputs; per branch its rank r
// at offset r0 among the R rank rows, its width w at offset o0 among the N outputs.
struct LoraNode {
  int64_t m, d_in, R, N;
  const std::vector<int64_t>& r0;
  const std::vector<int64_t>& r;
  const std::vector<int64_t>& o0;
  const std::vector<int64_t>& w;
};

// Whether this build and CPU run them (x86-64 with AVX512-BF16).
bool dp_lora_ready();

// h = bf16(x Aᵀ) (m, R), also into h32's rows (stride r32) where given; where out is given,
// out += h (s B)ᵀ per branch, rounded once. af (R, d_in) and bt ((s B)ᵀ, (R, N), zero off the
// branches' blocks) are fp32 holding bf16 values.
void dp_lora_forward(const c10::BFloat16* x, const LoraNode& node, const float* af,
                     const float* bt, c10::BFloat16* out, c10::BFloat16* h, c10::BFloat16* h32,
                     int64_t r32);

// dh = bf16(g sB) (m, R); where branch is given, bf16(dh A) (m, d_in); d_a = dhᵀ x (R, d_in)
// and d_bt = hᵀ g on the branches' blocks (R, N), unrounded fp32 sums.
void dp_lora_backward(const c10::BFloat16* g, const c10::BFloat16* h, const c10::BFloat16* x,
                      const LoraNode& node, const float* af, const float* bt, c10::BFloat16* dh,
                      c10::BFloat16* branch, float* d_a, float* d_bt);
