// tunesmith's CPU kernels: elementwise chains that torch runs as many ops, as one pass each.
//
// RMSNorm, the SwiGLU product, RoPE, dropout's masked scaling, packed attention's causal softmax,
// the loss head's softmax and NLL and DoRA's column scale are memory-bound chains of 2-12 eager ops
// forward and backward (casts to fp32 and back, products, reductions, integer mask arithmetic, an
// additive mask), each a pass over the activations and an allocation; packed attention's placement
// of rows in its per-example layout is a zero fill and scattered copies. Here each direction reads
// its inputs once and writes its outputs once, in fp32 inside and bf16 outside, with ATen's vector
// types and its thread pool (so torch.set_num_threads governs them too). Values follow the eager
// formulas (rmsnorm.py, rope.py, dropout.py, transformers' LlamaMLP, attention.py, head_ce.py),
// rounding to bf16 where they round; where a row's sum is added in another order, results are
// within one bf16 rounding of theirs (test_native.py). A LoRA branch's rank-r products
// (lora_linear.py) are small products, not a chain; they are here because oneDNN runs them far
// below its rate, and one pass over the rows serves all of them.
// ``evict`` drops a tensor from the caches for row_split's timing of products.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "lora.h"

// amx_lora.cpp: lora_backward's pass over the rows on AMX tiles.
void amx_lora_rows(const c10::BFloat16* g, const c10::BFloat16* h, const c10::BFloat16* x,
                   int64_t m, int64_t n, int64_t d_in, int64_t r, const float* bt, const float* af,
                   c10::BFloat16* dh, c10::BFloat16* branch, float* partial, int64_t per);

namespace {

using at::vec::convert_bfloat16_float;
using at::vec::convert_float_bfloat16;
using bf16 = c10::BFloat16;
using fV = at::vec::Vectorized<float>;
using bV = at::vec::Vectorized<bf16>;
// Elements per task (ATen's own kernels take 32768): a smaller pass runs on one thread.
constexpr int64_t kGrain = 16384;

// Horizontal sum and maximum. Vectorized's reduce_add and reduce_max are shuffles on AVX2 and
// AVX-512 (a causal softmax call 20% faster than through a stored array), but do not compile
// in the portable build of this torch's headers.
inline float hsum(fV a) {
  float t[fV::size()];
  a.store(t);
  float s = 0.f;
  for (int k = 0; k < fV::size(); k++) s += t[k];
  return s;
}
inline float hmax(fV a) {
  float t[fV::size()];
  a.store(t);
  float m = t[0];
  for (int k = 1; k < fV::size(); k++) m = std::max(m, t[k]);
  return m;
}
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
inline float fast_hsum(fV a) { return a.reduce_add(); }
inline float fast_hmax(fV a) { return a.reduce_max(); }
#else
inline float fast_hsum(fV a) { return hsum(a); }
inline float fast_hmax(fV a) { return hmax(a); }
#endif
// ATen's exp_u20 (within 20 ulp of fp32, Sleef's exp within 1) costs a SiLU pass 17-20% less;
// the bf16 results equal those of torch's own silu on the tests' and 5.7M random inputs.
inline fV sigmoid(fV g) { return fV(1.f) / (fV(1.f) + g.neg().exp_u20()); }
inline float sigmoid(float g) { return 1.f / (1.f + std::exp(-g)); }
inline std::tuple<fV, fV> load(const bf16* p) { return convert_bfloat16_float(bV::loadu(p)); }
inline void store(bf16* p, fV a, fV b) { convert_float_bfloat16(a, b).store(p); }
inline fV round_bf16(fV a) { return std::get<0>(convert_bfloat16_float(convert_float_bfloat16(a, a))); }
// Software prefetch, kAhead elements (2 KiB of bf16) ahead of a pass's reads. On the 2-core AMX
// Xeon the hardware prefetchers barely run ahead of these loops: a SwiGLU pass over operands
// no cache held took 2.4x its time on cached ones (569 against 232 us), and 238 with this
// (benchmarks/RESULTS.md, "Reads prefetched ahead of the passes"). A prefetch never faults, so
// the lines past a tensor's end need no test.
constexpr int64_t kAhead = 1024;
inline void ahead(const bf16* p) { __builtin_prefetch(p + kAhead, 0, 3); }
// Every line of [p, p + bytes): a row that a pass reads next but not in address order.
inline void ahead_lines(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 3);
}

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kBFloat16 && t.is_contiguous(),
              name, " must be a contiguous bf16 CPU tensor");
}

// h = bf16(silu(g)) * u, rounded as eager's silu output and product are.
torch::Tensor swiglu_forward(torch::Tensor g, torch::Tensor u) {
  check(g, "gate"); check(u, "up");
  TORCH_CHECK(g.sizes() == u.sizes(), "gate and up differ in shape");
  auto h = torch::empty_like(g);
  const bf16* gp = g.data_ptr<bf16>();
  const bf16* up = u.data_ptr<bf16>();
  bf16* hp = h.data_ptr<bf16>();
  at::parallel_for(0, g.numel(), kGrain, [&](int64_t b, int64_t e) {
    int64_t i = b;
    for (; i + bV::size() <= e; i += bV::size()) {
      ahead(gp + i);
      ahead(up + i);
      auto [g0, g1] = load(gp + i);
      auto [u0, u1] = load(up + i);
      store(hp + i, round_bf16(g0 * sigmoid(g0)) * u0, round_bf16(g1 * sigmoid(g1)) * u1);
    }
    for (; i < e; i++) {
      float gv = gp[i];
      hp[i] = bf16(float(bf16(gv * sigmoid(gv))) * float(up[i]));
    }
  });
  return h;
}

// dg = dh * u * silu'(g), du = dh * silu(g), silu'(g) = s (1 + g (1 - s)), s = sigmoid(g).
std::vector<torch::Tensor> swiglu_backward(torch::Tensor dh, torch::Tensor g, torch::Tensor u) {
  check(dh, "grad"); check(g, "gate"); check(u, "up");
  TORCH_CHECK(g.sizes() == u.sizes() && g.sizes() == dh.sizes(), "grad, gate and up differ in shape");
  auto dg = torch::empty_like(g);
  auto du = torch::empty_like(u);
  const bf16* dp = dh.data_ptr<bf16>();
  const bf16* gp = g.data_ptr<bf16>();
  const bf16* up = u.data_ptr<bf16>();
  bf16* dgp = dg.data_ptr<bf16>();
  bf16* dup = du.data_ptr<bf16>();
  const fV one(1.f);
  at::parallel_for(0, g.numel(), kGrain, [&](int64_t b, int64_t e) {
    int64_t i = b;
    for (; i + bV::size() <= e; i += bV::size()) {
      ahead(dp + i);
      ahead(gp + i);
      ahead(up + i);
      auto [d0, d1] = load(dp + i);
      auto [g0, g1] = load(gp + i);
      auto [u0, u1] = load(up + i);
      fV s0 = sigmoid(g0), s1 = sigmoid(g1);
      store(dup + i, d0 * round_bf16(g0 * s0), d1 * round_bf16(g1 * s1));
      store(dgp + i, d0 * u0 * s0 * (one + g0 * (one - s0)), d1 * u1 * s1 * (one + g1 * (one - s1)));
    }
    for (; i < e; i++) {
      float d = dp[i], gv = gp[i], uv = up[i], s = sigmoid(gv);
      dup[i] = bf16(d * float(bf16(gv * s)));
      dgp[i] = bf16(d * uv * s * (1.f + gv * (1.f - s)));
    }
  });
  return {dg, du};
}

// y = w * bf16(x r), r = rsqrt(mean(x^2) + eps) per row; returns (y, r as fp32 rows).
std::vector<torch::Tensor> rms_norm_forward(torch::Tensor x, torch::Tensor w, double eps) {
  check(x, "input"); check(w, "weight");
  const int64_t d = x.size(-1), rows = x.numel() / d;
  TORCH_CHECK(w.numel() == d, "weight does not match the last dimension");
  auto y = torch::empty_like(x);
  auto r = torch::empty({rows}, x.options().dtype(at::kFloat));
  const bf16* xp = x.data_ptr<bf16>();
  const bf16* wp = w.data_ptr<bf16>();
  bf16* yp = y.data_ptr<bf16>();
  float* rp = r.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / d), [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; row++) {
      const bf16* xr = xp + row * d;
      bf16* yr = yp + row * d;
      fV acc(0.f);
      int64_t i = 0;
      for (; i + bV::size() <= d; i += bV::size()) {
        ahead(xr + i);
        auto [a0, a1] = load(xr + i);
        acc = at::vec::fmadd(a0, a0, acc);
        acc = at::vec::fmadd(a1, a1, acc);
      }
      float ss = hsum(acc);
      for (; i < d; i++) ss += float(xr[i]) * float(xr[i]);
      const float rr = 1.f / std::sqrt(ss / d + static_cast<float>(eps));
      rp[row] = rr;
      const fV rv(rr);
      for (i = 0; i + bV::size() <= d; i += bV::size()) {
        auto [a0, a1] = load(xr + i);
        auto [w0, w1] = load(wp + i);
        store(yr + i, round_bf16(a0 * rv) * w0, round_bf16(a1 * rv) * w1);
      }
      for (; i < d; i++) yr[i] = bf16(float(bf16(float(xr[i]) * rr)) * float(wp[i]));
    }
  });
  return {y, r};
}

// dx = r (gy - x r^2 mean(gy x)), gy = g w, from the saved input and r (frozen weight).
torch::Tensor rms_norm_backward(torch::Tensor g, torch::Tensor x, torch::Tensor w, torch::Tensor r) {
  check(g, "grad"); check(x, "input"); check(w, "weight");
  const int64_t d = x.size(-1), rows = x.numel() / d;
  TORCH_CHECK(g.sizes() == x.sizes() && w.numel() == d && r.numel() == rows, "shapes differ");
  TORCH_CHECK(r.scalar_type() == at::kFloat && r.is_contiguous(), "r must be contiguous fp32");
  auto dx = torch::empty_like(x);
  const bf16* gp = g.data_ptr<bf16>();
  const bf16* xp = x.data_ptr<bf16>();
  const bf16* wp = w.data_ptr<bf16>();
  const float* rp = r.data_ptr<float>();
  bf16* dp = dx.data_ptr<bf16>();
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / d), [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; row++) {
      const bf16* gr = gp + row * d;
      const bf16* xr = xp + row * d;
      bf16* dr = dp + row * d;
      fV acc(0.f);
      int64_t i = 0;
      for (; i + bV::size() <= d; i += bV::size()) {
        ahead(gr + i);
        ahead(xr + i);
        auto [g0, g1] = load(gr + i);
        auto [x0, x1] = load(xr + i);
        auto [w0, w1] = load(wp + i);
        acc = at::vec::fmadd(g0 * w0, x0, acc);
        acc = at::vec::fmadd(g1 * w1, x1, acc);
      }
      float dot = hsum(acc);
      for (; i < d; i++) dot += float(gr[i]) * float(wp[i]) * float(xr[i]);
      const float rr = rp[row], c = dot / d * rr * rr;
      const fV rv(rr), cv(c);
      for (i = 0; i + bV::size() <= d; i += bV::size()) {
        auto [g0, g1] = load(gr + i);
        auto [x0, x1] = load(xr + i);
        auto [w0, w1] = load(wp + i);
        store(dr + i, rv * (g0 * w0 - x0 * cv), rv * (g1 * w1 - x1 * cv));
      }
      for (; i < d; i++) dr[i] = bf16(rr * (float(gr[i]) * float(wp[i]) - float(xr[i]) * c));
    }
  });
  return dx;
}

// RoPE on (b, heads, t, d) with any strides but a contiguous last dimension, cos and sin
// (b, 1, t, d) broadcast over heads; halves 1, 2 of the head dimension:
//   forward  y1 = x1 c1 - x2 s1,  y2 = x2 c2 + x1 s2
//   backward (sign = -1)  dx1 = g1 c1 + g2 s2,  dx2 = g2 c2 - g1 s1
// with every product rounded to bf16 before its sum, as transformers' eager ops round them, so
// both directions equal transformers' bit for bit. The output keeps x's strides.
torch::Tensor rope(torch::Tensor x, torch::Tensor cos, torch::Tensor sin, bool backward) {
  TORCH_CHECK(x.dim() == 4 && cos.dim() == 4 && sin.dim() == 4, "rope takes 4-D tensors");
  for (const auto* t : {&x, &cos, &sin})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kBFloat16 && t->stride(3) == 1,
                "rope's tensors must be bf16 CPU tensors with a contiguous last dimension");
  TORCH_CHECK(cos.strides() == sin.strides() && cos.sizes() == sin.sizes(), "cos and sin differ");
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3), half = D / 2;
  TORCH_CHECK(D % 2 == 0 && cos.size(3) == D && cos.size(2) == T && cos.size(1) == 1 &&
              (cos.size(0) == B || cos.size(0) == 1), "cos and sin must be (b, 1, t, d)");
  auto y = torch::empty_like(x);  // preserves x's layout
  const bf16* xp = x.data_ptr<bf16>();
  const bf16* cp = cos.data_ptr<bf16>();
  const bf16* sp = sin.data_ptr<bf16>();
  bf16* yp = y.data_ptr<bf16>();
  const int64_t cb = cos.size(0) == 1 ? 0 : cos.stride(0), ct = cos.stride(2);
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1), xs2 = x.stride(2);
  const int64_t ys0 = y.stride(0), ys1 = y.stride(1), ys2 = y.stride(2);
  const float sign = backward ? -1.f : 1.f;  // backward rotates the other way
  const fV sv(sign);
  at::parallel_for(0, B * H * T, std::max<int64_t>(1, kGrain / D), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++) {
      const int64_t bi = r / (H * T), hi = (r / T) % H, ti = r % T;
      const bf16* xr = xp + bi * xs0 + hi * xs1 + ti * xs2;
      bf16* yr = yp + bi * ys0 + hi * ys1 + ti * ys2;
      const bf16* cr = cp + bi * cb + ti * ct;
      const bf16* sr = sp + bi * cb + ti * ct;
      ahead_lines(xr + 4 * xs2, D * sizeof(bf16));  // the rows (strided: q and k are views)
      int64_t i = 0;
      for (; i + bV::size() <= half; i += bV::size()) {
        auto [a0, a1] = load(xr + i);          // x1
        auto [b0, b1] = load(xr + half + i);   // x2
        auto [c0, c1] = load(cr + i);          // c1
        auto [d0, d1] = load(cr + half + i);   // c2
        auto [s0, s1] = load(sr + i);          // s1
        auto [t0, t1] = load(sr + half + i);   // s2
        // forward: y1 = x1 c1 - x2 s1, y2 = x2 c2 + x1 s2; backward: y1 = x1 c1 + x2 s2,
        // y2 = x2 c2 - x1 s1 (the roles of s1 and s2 swap with the sign).
        fV p0 = backward ? t0 : s0, p1 = backward ? t1 : s1;  // sine for the first half
        fV q0 = backward ? s0 : t0, q1 = backward ? s1 : t1;  // sine for the second half
        store(yr + i, round_bf16(a0 * c0) - sv * round_bf16(b0 * p0),
              round_bf16(a1 * c1) - sv * round_bf16(b1 * p1));
        store(yr + half + i, round_bf16(b0 * d0) + sv * round_bf16(a0 * q0),
              round_bf16(b1 * d1) + sv * round_bf16(a1 * q1));
      }
      for (; i < half; i++) {
        float x1 = xr[i], x2 = xr[half + i], c1 = cr[i], c2 = cr[half + i];
        float s1 = sr[i], s2 = sr[half + i];
        float p = backward ? s2 : s1, q = backward ? s1 : s2;
        yr[i] = bf16(float(bf16(x1 * c1)) - sign * float(bf16(x2 * p)));
        yr[half + i] = bf16(float(bf16(x2 * c2)) + sign * float(bf16(x1 * q)));
      }
    }
  });
  return y;
}

// Dropout's x * keep * scale with the mask FastDropout draws (dropout.py): word w of the mask
// is splitmix64(seed + (w + 1) * golden gamma) (Steele, Lea & Flood, 2014, the finalizer of
// Java's SplittableRandom), and element i is kept where the low 15 bits of 16-bit lane i % 4 of
// word i / 4 are >= threshold. A counter-based mask is computed where it is applied, on every
// thread, and again for the backward, instead of drawn serially from torch's generator and
// kept. Scaled as addcmul computes 0 + scale * x * keep (fp32, one rounding), so the values
// equal the eager mask's (dropout.keep_mask) bit for bit.
constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ULL;
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
inline float kept(uint64_t seed, int64_t i, int16_t thr) {
  const uint64_t word = mix64(seed + (static_cast<uint64_t>(i >> 2) + 1) * kGamma);
  return static_cast<int16_t>((word >> (16 * (i & 3))) & 0x7fff) >= thr ? 1.f : 0.f;
}

torch::Tensor dropout_scale(torch::Tensor x, int64_t seed, int64_t threshold, double scale) {
  check(x, "input");
  constexpr int64_t kBlock = bV::size();  // elements per vector step: kBlock / 4 whole words
  static_assert(kBlock % 4 == 0, "a vector step covers whole 64-bit words");
  auto y = torch::empty_like(x);
  const bf16* xp = x.data_ptr<bf16>();
  bf16* yp = y.data_ptr<bf16>();
  const uint64_t s = static_cast<uint64_t>(seed);
  const float sc = static_cast<float>(scale);
  const int16_t thr = static_cast<int16_t>(threshold);
  const fV sv(sc), zero(0.f);
  at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) {
    int64_t i = b;
    for (; i < e && i % kBlock != 0; i++) yp[i] = bf16(0.f + sc * float(xp[i]) * kept(s, i, thr));
    uint64_t words[kBlock / 4];
    int16_t lanes[kBlock];
    float keep[kBlock];
    for (; i + kBlock <= e; i += kBlock) {
      const uint64_t w0 = static_cast<uint64_t>(i >> 2) + 1;
      for (int k = 0; k < kBlock / 4; k++) words[k] = mix64(s + (w0 + k) * kGamma);
      std::memcpy(lanes, words, sizeof(words));  // little-endian: lane k of word j is k % 4
      for (int k = 0; k < kBlock; k++) keep[k] = (lanes[k] & 0x7fff) >= thr ? 1.f : 0.f;
      ahead(xp + i);
      auto [x0, x1] = load(xp + i);
      store(yp + i, zero + sv * x0 * fV::loadu(keep), zero + sv * x1 * fV::loadu(keep + fV::size()));
    }
    for (; i < e; i++) yp[i] = bf16(0.f + sc * float(xp[i]) * kept(s, i, thr));
  });
  return y;
}

// Zeros from n up to len: the keys a row does not see.
inline void zero_tail(bf16* y, int64_t n, int64_t len) {
  for (int64_t j = n; j < len; j += bV::size())
    bV(bf16(0.f)).store(y + j, static_cast<int>(std::min<int64_t>(bV::size(), len - j)));
}
// fp32 buffer room for a row of len, read in whole vectors past its end.
inline int64_t room(int64_t len) { return (len / bV::size() + 1) * bV::size(); }

void check_scores(const torch::Tensor& t, const char* name) {
  check(t, name);
  TORCH_CHECK(t.dim() == 3 && t.size(2) > 0 && t.size(1) % t.size(2) == 0,
              name, " must be (rows, g * L, L)");
}

// Causal softmax of packed attention's scores (packed_attention.py's per-example layout): row r
// of a (rows, g * L, L) batch is query position r % L, which sees keys 0 .. r % L, so only those
// are read, exponentiated and summed; p = softmax(scale * s) there and 0 after. The reference is
// baddbmm(mask, q, k^T, alpha=scale) and torch.softmax: the scaled scores are the same where the
// scale is a power of two (1/sqrt(64)), the row sums may be added in another order, and the
// probabilities are within one bf16 rounding of theirs (equal in every case measured).
torch::Tensor causal_softmax(torch::Tensor s, double scale) {
  check_scores(s, "scores");
  TORCH_CHECK(scale > 0, "scale must be positive (the row maximum is taken before scaling)");
  const int64_t L = s.size(2), rows = s.size(0) * s.size(1);
  auto p = torch::empty_like(s);
  const bf16* sp = s.data_ptr<bf16>();
  bf16* pp = p.data_ptr<bf16>();
  const fV sc(static_cast<float>(scale));
  const bV unseen(bf16(-std::numeric_limits<float>::infinity()));
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / L), [&](int64_t b, int64_t e) {
    std::vector<float> buf(room(L));
    for (int64_t r = b, n = b % L + 1; r < e; r++, n = n % L + 1) {
      const bf16* x = sp + r * L;
      fV vmax(-std::numeric_limits<float>::infinity());
      for (int64_t j = 0; j < n; j += bV::size()) {
        const int64_t c = std::min<int64_t>(bV::size(), n - j);
        auto [a0, a1] = convert_bfloat16_float(bV::set(unseen, bV::loadu(x + j, c), c));
        vmax = at::vec::maximum(vmax, at::vec::maximum(a0, a1));
      }
      const fV mx = fV(fast_hmax(vmax)) * sc;
      fV vsum(0.f);
      for (int64_t j = 0; j < n; j += bV::size()) {
        const int64_t c = std::min<int64_t>(bV::size(), n - j);
        auto [a0, a1] = convert_bfloat16_float(bV::set(unseen, bV::loadu(x + j, c), c));
        const fV e0 = (a0 * sc - mx).exp(), e1 = (a1 * sc - mx).exp();
        e0.store(&buf[j]);
        e1.store(&buf[j + fV::size()]);
        vsum = vsum + e0 + e1;
      }
      const fV inv(1.f / fast_hsum(vsum));
      bf16* y = pp + r * L;
      for (int64_t j = 0; j < n; j += bV::size()) {
        const int c = static_cast<int>(std::min<int64_t>(bV::size(), n - j));
        convert_float_bfloat16(fV::loadu(&buf[j]) * inv, fV::loadu(&buf[j + fV::size()]) * inv).store(y + j, c);
      }
      zero_tail(y, n, L);
    }
  });
  return p;
}

// The scores' gradient: scale * p * (dp - sum(dp * p)) over the keys a row sees, 0 after.
torch::Tensor causal_softmax_backward(torch::Tensor dp, torch::Tensor p, double scale) {
  check_scores(dp, "grad");
  check_scores(p, "probabilities");
  TORCH_CHECK(dp.sizes() == p.sizes(), "grad and probabilities differ in shape");
  const int64_t L = p.size(2), rows = p.size(0) * p.size(1);
  auto ds = torch::empty_like(p);
  const bf16* gp = dp.data_ptr<bf16>();
  const bf16* pp = p.data_ptr<bf16>();
  bf16* dsp = ds.data_ptr<bf16>();
  const fV sc(static_cast<float>(scale));
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / L), [&](int64_t b, int64_t e) {
    for (int64_t r = b, n = b % L + 1; r < e; r++, n = n % L + 1) {
      const bf16* g = gp + r * L;
      const bf16* q = pp + r * L;
      fV vdot(0.f);  // lanes past the row load as zeros: they add nothing
      for (int64_t j = 0; j < n; j += bV::size()) {
        const int64_t c = std::min<int64_t>(bV::size(), n - j);
        auto [g0, g1] = convert_bfloat16_float(bV::loadu(g + j, c));
        auto [q0, q1] = convert_bfloat16_float(bV::loadu(q + j, c));
        vdot = vdot + g0 * q0 + g1 * q1;
      }
      const fV dot(fast_hsum(vdot));
      bf16* y = dsp + r * L;
      for (int64_t j = 0; j < n; j += bV::size()) {
        const int64_t c = std::min<int64_t>(bV::size(), n - j);
        auto [g0, g1] = convert_bfloat16_float(bV::loadu(g + j, c));
        auto [q0, q1] = convert_bfloat16_float(bV::loadu(q + j, c));
        convert_float_bfloat16(sc * q0 * (g0 - dot), sc * q1 * (g1 - dot)).store(y + j, static_cast<int>(c));
      }
      zero_tail(y, n, L);
    }
  });
  return ds;
}

// Rows of src picked by index, a zero row where the index is -1, for any dtype: packed
// attention's placement of tokens in their per-example slots (packed_attention.py), one pass
// over the output instead of a zero fill and an index_copy of the tokens' rows.
torch::Tensor gather_rows(torch::Tensor src, torch::Tensor index) {
  TORCH_CHECK(src.device().is_cpu() && src.dim() == 2 && src.is_contiguous(),
              "rows must be a contiguous 2-D CPU tensor");
  TORCH_CHECK(index.device().is_cpu() && index.dim() == 1 && index.scalar_type() == at::kLong &&
              index.is_contiguous(), "index must be a contiguous 1-D int64 CPU tensor");
  const int64_t rows = src.size(0), m = index.size(0);
  auto out = torch::empty({m, src.size(1)}, src.options());
  const int64_t bytes = src.size(1) * src.element_size();
  const char* sp = static_cast<const char*>(src.data_ptr());
  char* op = static_cast<char*>(out.data_ptr());
  const int64_t* ip = index.data_ptr<int64_t>();
  std::atomic<bool> bad(false);
  at::parallel_for(0, m, std::max<int64_t>(1, 2 * kGrain / std::max<int64_t>(bytes, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) {
      if (i + 2 < e && ip[i + 2] >= 0 && ip[i + 2] < rows) ahead_lines(sp + ip[i + 2] * bytes, bytes);
      if (ip[i] == -1) std::memset(op + i * bytes, 0, bytes);
      else if (ip[i] >= 0 && ip[i] < rows) std::memcpy(op + i * bytes, sp + ip[i] * bytes, bytes);
      else bad = true;
    }
  });
  TORCH_CHECK(!bad, "index out of range [-1, ", rows, ")");
  return out;
}

// A shared prefix's gradient in packed attention's placement (packed_attention.py): g holds
// each token's gradient from its own slot; a prefix row r also has copies at other slots, and
// its gradient is float(g[r]) plus float(grad[copy]) over its copies, in their order, rounded
// once, as the eager fp32 index_add_ adds them. rows come sorted, a row's copies together.
void add_copies_(torch::Tensor g, torch::Tensor grad, torch::Tensor rows, torch::Tensor copies) {
  check(g, "gradient"); check(grad, "layout gradient");
  TORCH_CHECK(g.dim() == 2 && grad.dim() == 2 && g.size(1) == grad.size(1),
              "gradient and layout gradient must be 2-D with one row width");
  for (const auto* t : {&rows, &copies})
    TORCH_CHECK(t->device().is_cpu() && t->dim() == 1 && t->scalar_type() == at::kLong &&
                t->is_contiguous() && t->size(0) == rows.size(0),
                "rows and copies must be contiguous 1-D int64 CPU tensors of one length");
  const int64_t n = rows.size(0), d = g.size(1), W = bV::size();
  const int64_t* rp = rows.data_ptr<int64_t>();
  const int64_t* cp = copies.data_ptr<int64_t>();
  std::vector<int64_t> starts;  // where each row's run of copies begins
  for (int64_t i = 0; i < n; i++) {
    TORCH_CHECK(rp[i] >= 0 && rp[i] < g.size(0) && cp[i] >= 0 && cp[i] < grad.size(0),
                "row or copy out of range");
    TORCH_CHECK(i == 0 || rp[i] >= rp[i - 1], "rows must be sorted");
    if (i == 0 || rp[i] != rp[i - 1]) starts.push_back(i);
  }
  starts.push_back(n);
  bf16* gp = g.data_ptr<bf16>();
  const bf16* sp = grad.data_ptr<bf16>();
  const int64_t runs = static_cast<int64_t>(starts.size()) - 1;
  at::parallel_for(0, runs, std::max<int64_t>(1, kGrain / std::max<int64_t>(d * 4, 1)), [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; u++) {
      bf16* y = gp + rp[starts[u]] * d;
      int64_t k = 0;
      for (; k + W <= d; k += W) {
        auto [a0, a1] = load(y + k);
        for (int64_t i = starts[u]; i < starts[u + 1]; i++) {
          auto [c0, c1] = load(sp + cp[i] * d + k);
          a0 = a0 + c0;
          a1 = a1 + c1;
        }
        store(y + k, a0, a1);
      }
      for (; k < d; k++) {
        float a = float(y[k]);
        for (int64_t i = starts[u]; i < starts[u + 1]; i++) a += float(sp[cp[i] * d + k]);
        y[k] = bf16(a);
      }
    }
  });
}

// The loss head's last step per row of bf16 logits (rows, V) and its target t: returns the fp32
// NLL -log_softmax(x)[t] and overwrites the row with bf16(softmax(x) - onehot(t)), the loss's
// gradient up to the backward's scale (loss/head_ce.py). One read of the row from memory, the
// later passes from cache, where the eager chunk loop copies it to fp32 and makes four more
// passes. log_softmax as ATen computes it, (x - max) - log(sum(exp(x - max))), with ATen's
// exp_u20 (within 20 ulp of fp32; Sleef's exp, within 1, took the demo head's call 1.3x the
// time) and the sum in another order: the NLL within a few fp32 roundings of ATen's, the
// gradient's bf16 the same but for a rounding in ~0.002% of elements (test_native.py).
torch::Tensor softmax_nll_(torch::Tensor logits, torch::Tensor targets) {
  check(logits, "logits");
  TORCH_CHECK(logits.dim() == 2, "logits must be (rows, vocabulary)");
  TORCH_CHECK(targets.device().is_cpu() && targets.scalar_type() == at::kLong &&
              targets.dim() == 1 && targets.size(0) == logits.size(0) && targets.is_contiguous(),
              "targets must be a contiguous int64 CPU tensor with one entry per row");
  const int64_t rows = logits.size(0), V = logits.size(1);
  TORCH_CHECK(V > 0, "logits have no vocabulary");
  const int64_t* tp = targets.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; r++)
    TORCH_CHECK(tp[r] >= 0 && tp[r] < V, "target ", tp[r], " of row ", r, " is outside [0, ", V, ")");
  auto nll = torch::empty({rows}, logits.options().dtype(at::kFloat));
  bf16* lp = logits.data_ptr<bf16>();
  float* np = nll.data_ptr<float>();
  constexpr int64_t W = bV::size();
  at::parallel_for(0, rows, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++) {
      bf16* x = lp + r * V;
      const int64_t body = V - V % W;
      fV m0(-std::numeric_limits<float>::infinity()), m1 = m0;
      for (int64_t i = 0; i < body; i += W) {
        auto [a, c] = load(x + i);
        m0 = at::vec::maximum(m0, a);
        m1 = at::vec::maximum(m1, c);
      }
      float m = std::max(fast_hmax(m0), fast_hmax(m1));
      for (int64_t i = body; i < V; i++) m = std::max(m, float(x[i]));
      const fV mv(m);
      fV acc(0.f);
      for (int64_t i = 0; i < body; i += W) {
        auto [a, c] = load(x + i);
        acc = acc + (a - mv).exp_u20();
        acc = acc + (c - mv).exp_u20();
      }
      float sum = fast_hsum(acc);
      for (int64_t i = body; i < V; i++) sum += std::exp(float(x[i]) - m);
      const float log_sum = std::log(sum);
      const fV lv(log_sum);
      const int64_t t = tp[r];
      const float log_p_t = (float(x[t]) - m) - log_sum;
      // exp of the log-probabilities, as eager's exp_ of log_softmax: the first pass's
      // exp(x - max) over the sum would round differently.
      for (int64_t i = 0; i < body; i += W) {
        auto [a, c] = load(x + i);
        store(x + i, ((a - mv) - lv).exp_u20(), ((c - mv) - lv).exp_u20());
      }
      for (int64_t i = body; i < V; i++) x[i] = bf16(std::exp((float(x[i]) - m) - log_sum));
      np[r] = -log_p_t;
      x[t] = bf16(std::exp(log_p_t) - 1.f);
    }
  });
  return nll;
}

// A LoRA branch's rank-r products (r of 4-64 in all): forward h = x Aᵀ and out += h (sB)ᵀ; backward
// dh = g sB, d_A = dhᵀ x, d_B = gᵀ h and the branch's input gradient dh A.
//
// oneDNN runs each as its own product far below its matmul rate: in a demo step (every linear
// layer, rank 4) they were ~900 products and ~16% of the step's time
// (benchmarks/RESULTS.md, "The LoRA branch's rank-r products in one pass"), and on stacked
// q/k/v it computes the dense products of a block-diagonal sB, three times the work. Here rows
// are taken four at a time: each row of g and x is read once for every product that needs it,
// A and sB are fp32 rows in cache, the sums over rows (d_A, d_B) are kept per thread, and only
// sB's diagonal blocks are computed. Sums in fp32, rounded to bf16 where oneDNN's bf16 products
// round (the order of a sum differs: test_native.py). A and B come as the trained weights
// (fp32 masters under autocast) and their gradients go back in those dtypes, rounded and
// scaled as the eager path's casts round them, so a node runs no cast or slice ops of its own.
// Where the CPU has AVX512-BF16 the passes can run in its bf16 dot products instead
// (dp_lora.cpp, bf16_dots); the fp32 pass here is the path elsewhere and their reference.

// dst[q][0:n] = fp32 of src rows q (row stride ld), for RB rows.
template <int RB>
inline void rows_to_float(const bf16* src, int64_t ld, int64_t n, float* dst) {
  constexpr int64_t W = bV::size();
  for (int q = 0; q < RB; q++) {
    const bf16* s = src + q * ld;
    float* d = dst + q * n;
    int64_t k = 0;
    for (; k + W <= n; k += W) {
      ahead(s + k);
      auto [a, b] = load(s + k);
      a.store(d + k);
      b.store(d + k + fV::size());
    }
    for (; k < n; k++) d[k] = float(s[k]);
  }
}

// out[q][jj] = sum_k rows[q][k] w[jj][k] over k in [0, n): RB rows of stride ld against JB rows
// of w (stride ldw), all fp32; each loaded chunk serves JB (or RB) products.
template <int RB, int JB>
inline void dots(const float* rows, int64_t ld, const float* w, int64_t ldw, int64_t n, float* out) {
  constexpr int64_t F = fV::size();
  fV acc[RB][JB];
  for (int q = 0; q < RB; q++)
    for (int jj = 0; jj < JB; jj++) acc[q][jj] = fV(0.f);
  int64_t k = 0;
  for (; k + F <= n; k += F) {
    fV xr[RB];
    for (int q = 0; q < RB; q++) xr[q] = fV::loadu(rows + q * ld + k);
    for (int jj = 0; jj < JB; jj++) {
      const fV wv = fV::loadu(w + jj * ldw + k);
      for (int q = 0; q < RB; q++) acc[q][jj] = at::vec::fmadd(xr[q], wv, acc[q][jj]);
    }
  }
  for (int q = 0; q < RB; q++)
    for (int jj = 0; jj < JB; jj++) {
      float v = fast_hsum(acc[q][jj]);
      for (int64_t kk = k; kk < n; kk++) v += rows[q * ld + kk] * w[jj * ldw + kk];
      out[q * JB + jj] = v;
    }
}

// acc[jj][0:n] += sum_q c[q][jj] rows[q][0:n]: RB fp32 rows of stride ld into JB accumulator
// rows of stride lda.
template <int RB, int JB>
inline void accumulate(const float* c, const float* rows, int64_t ld, int64_t n, float* acc, int64_t lda) {
  constexpr int64_t F = fV::size();
  fV cv[RB][JB];
  for (int q = 0; q < RB; q++)
    for (int jj = 0; jj < JB; jj++) cv[q][jj] = fV(c[q * JB + jj]);
  int64_t k = 0;
  for (; k + F <= n; k += F) {
    fV xr[RB];
    for (int q = 0; q < RB; q++) xr[q] = fV::loadu(rows + q * ld + k);
    for (int jj = 0; jj < JB; jj++) {
      fV a = fV::loadu(acc + jj * lda + k);
      for (int q = 0; q < RB; q++) a = at::vec::fmadd(cv[q][jj], xr[q], a);
      a.store(acc + jj * lda + k);
    }
  }
  for (; k < n; k++)
    for (int jj = 0; jj < JB; jj++)
      for (int q = 0; q < RB; q++) acc[jj * lda + k] += c[q * JB + jj] * rows[q * ld + k];
}

// out[q][0:n] = bf16(base[q][0:n] + sum_j c[q][j] w[j][0:n]) for RB rows (base may be null);
// c is (RB, rc) with row stride ldc, w is (rc, n) with row stride ldw, out/base row stride ld.
template <int RB>
inline void combine(const bf16* base, const float* c, int64_t ldc, int64_t rc, const float* w,
                    int64_t ldw, int64_t n, bf16* out, int64_t ld) {
  constexpr int64_t W = bV::size(), F = fV::size();
  int64_t k = 0;
  for (; k + W <= n; k += W) {
    fV o0[RB], o1[RB];
    for (int q = 0; q < RB; q++) {
      if (base != nullptr) {
        std::tie(o0[q], o1[q]) = load(base + q * ld + k);
      } else {
        o0[q] = fV(0.f);
        o1[q] = fV(0.f);
      }
    }
    for (int64_t j = 0; j < rc; j++) {
      const fV w0 = fV::loadu(w + j * ldw + k), w1 = fV::loadu(w + j * ldw + k + F);
      for (int q = 0; q < RB; q++) {
        const fV cv(c[q * ldc + j]);
        o0[q] = at::vec::fmadd(cv, w0, o0[q]);
        o1[q] = at::vec::fmadd(cv, w1, o1[q]);
      }
    }
    for (int q = 0; q < RB; q++) store(out + q * ld + k, o0[q], o1[q]);
  }
  for (; k < n; k++)
    for (int q = 0; q < RB; q++) {
      float v = base != nullptr ? float(base[q * ld + k]) : 0.f;
      for (int64_t j = 0; j < rc; j++) v += c[q * ldc + j] * w[j * ldw + k];
      out[q * ld + k] = bf16(v);
    }
}

void check_matrix(const torch::Tensor& t, const char* name, int64_t rows, int64_t cols) {
  check(t, name);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, name, " must be (", rows,
              ", ", cols, "), got ", t.sizes());
}

using lora::in_blocks_of_4;
using lora::in_row_blocks;
using lora::kRows;
constexpr int64_t kMaxRank = 64;  // a node's ranks summed (native.LORA_MAX_RANK)

// A node's branches for its input x (m, d_in), checked here for every LoRA kernel: A_t
// (r_t, d_in) and B_t (w_t, r_t), in fp32 (the trained masters) or bf16, and their scales s_t.
// The products read bf16(A) and bf16(s_t B_t), rounded as the eager path's casts
// (`A.to(bf16)`, `(B * s).to(bf16)`) round them, as fp32 rows: af (R, d_in) and bt, sB
// transposed (R, N), zero off its diagonal blocks.
struct Branches {
  std::vector<int64_t> r0, r, o0, w;  // per branch: rank and output width, with their offsets
  int64_t R = 0, N = 0, d_in = 0;
  std::vector<float> af, bt;
  Branches(const torch::Tensor& x, const std::vector<torch::Tensor>& a,
           const std::vector<torch::Tensor>& b, const std::vector<double>& scales) {
    check(x, "input");
    TORCH_CHECK(x.dim() == 2, "input must be 2-D, got ", x.sizes());
    d_in = x.size(1);
    TORCH_CHECK(!a.empty() && a.size() == b.size() && a.size() == scales.size(),
                "A, B and scales must pair up");
    for (size_t t = 0; t < a.size(); t++) {
      check_master(a[t], "A"); check_master(b[t], "B");
      TORCH_CHECK(a[t].dim() == 2 && a[t].size(1) == d_in, "A must be (rank, ", d_in, "), got ",
                  a[t].sizes());
      TORCH_CHECK(b[t].dim() == 2 && b[t].size(1) == a[t].size(0), "B must be (width, ",
                  a[t].size(0), "), got ", b[t].sizes());
      r0.push_back(R); r.push_back(a[t].size(0)); o0.push_back(N); w.push_back(b[t].size(0));
      R += a[t].size(0); N += b[t].size(0);
    }
    TORCH_CHECK(R <= kMaxRank, "ranks above ", kMaxRank, " in all are not handled");
    af.resize(R * d_in);
    bt.assign(R * N, 0.f);
    std::vector<float> sb;
    for (size_t t = 0; t < a.size(); t++) {
      rounded_into(a[t], 1.f, af.data() + r0[t] * d_in);  // A_t's rows, in order
      sb.resize(b[t].numel());
      rounded_into(b[t], static_cast<float>(scales[t]), sb.data());
      const int64_t rt = r[t];
      // s B_t transposed into its rows of bt, a row at a time: stored a column at a time, the
      // rows' lines 4 KiB apart (N = 3072) share one L1 set, and a rank-16 gate + up node spent
      // ~150 us a call evicting them.
      float* block = bt.data() + r0[t] * N + o0[t];
      for (int64_t j = 0; j < rt; j++)
        for (int64_t o = 0; o < w[t]; o++) block[j * N + o] = sb[o * rt + j];
    }
  }

  // dst[i] = t[i] * s rounded to bf16 (in fp32, as a product with the scale rounds once), for
  // a contiguous fp32 or bf16 tensor; fp32 in vectors (a scalar rounding and a division to place
  // each element of B were most of a small node's call).
  static void rounded_into(const torch::Tensor& t, float s, float* dst) {
    if (t.scalar_type() != at::kFloat) {
      each_value(t, [&](int64_t i, float v) { dst[i] = rounded(v * s); });
      return;
    }
    const int64_t n = t.numel();
    const float* p = t.data_ptr<float>();
    int64_t i = 0;
    for (; i + fV::size() <= n; i += fV::size())
      round_bf16(fV::loadu(p + i) * fV(s)).store(dst + i);
    for (; i < n; i++) dst[i] = rounded(p[i] * s);
  }

  // fn(i, float(t[i])) for every element of a contiguous fp32 or bf16 tensor.
  template <typename Fn>
  static void each_value(const torch::Tensor& t, Fn fn) {
    const int64_t n = t.numel();
    if (t.scalar_type() == at::kFloat) {
      const float* p = t.data_ptr<float>();
      for (int64_t i = 0; i < n; i++) fn(i, p[i]);
    } else {
      const bf16* p = t.data_ptr<bf16>();
      for (int64_t i = 0; i < n; i++) fn(i, float(p[i]));
    }
  }
  // As a cast to bf16 rounds (a product with the scale, in fp32 or bf16, computes in fp32 and
  // rounds once too).
  static float rounded(float v) { return float(bf16(v)); }

  LoraNode node(int64_t m) const { return {m, d_in, R, N, r0, r, o0, w}; }

  static void check_master(const torch::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() &&
                (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16),
                name, " must be a contiguous fp32 or bf16 CPU tensor");
  }
};

// t[i] = value(i) for every element of a contiguous fp32 or bf16 tensor (bf16 rounded once,
// as a bf16 product with a scale rounds).
template <typename Fn>
inline void fill(torch::Tensor& t, Fn value) {
  const int64_t n = t.numel();
  if (t.scalar_type() == at::kFloat) {
    float* p = t.data_ptr<float>();
    for (int64_t i = 0; i < n; i++) p[i] = value(i);
  } else {
    bf16* p = t.data_ptr<bf16>();
    for (int64_t i = 0; i < n; i++) p[i] = bf16(value(i));
  }
}

// Forward: h = bf16(x Aᵀ), out += h sBᵀ in place (sB's diagonal blocks only; one rounding).
// x (m, d_in), the branches' a_t (r_t, d_in), b_t (w_t, r_t) and scales, out (m, Σ w_t).
// Returns h (m, Σ r_t).
// Per row of x: h = x A^T, rounded to bf16, into hp (row stride R) and, where h32p is given,
// into its rows of r32 columns too; where op is given, out += h (s B)^T per branch.
void lora_rows(const torch::Tensor& x, const Branches& bl, bf16* op, bf16* hp, bf16* h32p,
               int64_t r32, bool bf16_dots) {
  const int64_t m = x.size(0), d_in = x.size(1), R = bl.R, N = bl.N;
  if (bf16_dots && dp_lora_ready()) {
    dp_lora_forward(x.data_ptr<bf16>(), bl.node(m), bl.af.data(), bl.bt.data(), op, hp, h32p, r32);
    return;
  }
  const auto& af = bl.af;
  const auto& bt = bl.bt;
  const bf16* xp = x.data_ptr<bf16>();
  auto rows = [&](auto rb, int64_t i, float* xf) {
    constexpr int RB = decltype(rb)::value;
    rows_to_float<RB>(xp + i * d_in, d_in, d_in, xf);
    float hr[RB * kMaxRank];
    in_blocks_of_4(0, R, [&](auto jb, int64_t j) {
      constexpr int JB = decltype(jb)::value;
      float d[RB * JB];
      dots<RB, JB>(xf, d_in, af.data() + j * d_in, d_in, d_in, d);
      for (int q = 0; q < RB; q++)
        for (int jj = 0; jj < JB; jj++) {
          hp[(i + q) * R + j + jj] = bf16(d[q * JB + jj]);
          if (h32p != nullptr) h32p[(i + q) * r32 + j + jj] = hp[(i + q) * R + j + jj];
          hr[q * R + j + jj] = float(hp[(i + q) * R + j + jj]);
        }
    });
    for (size_t t = 0; op != nullptr && t < bl.r.size(); t++)
      combine<RB>(op + i * N + bl.o0[t], hr + bl.r0[t], R, bl.r[t], bt.data() + bl.r0[t] * N + bl.o0[t],
                  N, bl.w[t], op + i * N + bl.o0[t], N);
  };
  in_row_blocks(m, d_in + (op != nullptr ? N : 0), [&] {
    return [&, xf = std::vector<float>(kRows * d_in)](auto rb, int64_t i) mutable {
      rows(rb, i, xf.data());
    };
  });
}

torch::Tensor lora_forward_(torch::Tensor out, torch::Tensor x, std::vector<torch::Tensor> a,
                            std::vector<torch::Tensor> b, std::vector<double> scales,
                            bool bf16_dots) {
  const Branches bl(x, a, b, scales);
  check_matrix(out, "output", x.size(0), bl.N);
  auto h = torch::empty({x.size(0), bl.R}, x.options());
  lora_rows(x, bl, out.data_ptr<bf16>(), h.data_ptr<bf16>(), nullptr, 0, bf16_dots);
  return h;
}

// The branches as a low-rank extension of the frozen product (amx_gemm.cpp's a2 and b2t): h as
// lora_forward_ returns it, h again with its R columns padded with zeros to a multiple of 32,
// and (s B)^T's blocks transposed, (N, R padded), rounded as lora_forward_ rounds them. The
// product plus the extension equals lora_forward_'s out but for one rounding fewer.
std::vector<torch::Tensor> lora_operands(torch::Tensor x, std::vector<torch::Tensor> a,
                                         std::vector<torch::Tensor> b, std::vector<double> scales,
                                         bool bf16_dots) {
  const Branches bl(x, a, b, scales);
  const int64_t R = bl.R, N = bl.N, r32 = (R + 31) / 32 * 32;
  auto h = torch::empty({x.size(0), R}, x.options());
  auto h32 = torch::zeros({x.size(0), r32}, x.options());
  lora_rows(x, bl, nullptr, h.data_ptr<bf16>(), h32.data_ptr<bf16>(), r32, bf16_dots);
  auto sbt = torch::zeros({N, r32}, x.options());
  // bt's values are bf16 values already: their upper halves are exact, with no rounding to do
  // (a call on one row for a rank-16 node of 1536 outputs: 66 -> 49 us).
  // Read a row of bt at a time (a column at a time, its lines 4 KiB apart share an L1 set).
  uint16_t* sp = reinterpret_cast<uint16_t*>(sbt.data_ptr<bf16>());
  for (int64_t j = 0; j < R; j++)
    for (int64_t o = 0; o < N; o++) sp[o * r32 + j] = lora::upper_half(bl.bt[j * N + o]);
  return {h, h32, sbt};
}

// Backward from g (m, Σ w_t) with the forward's h, x (the branch's input) and branches: returns
// dh = bf16(g sB) (m, Σ r_t), with_branch the branch's input gradient bf16(dh A) (m, d_in) (else
// empty), then each A_t's gradient bf16(dhᵀ x) and each B_t's bf16(gᵀ h) (its diagonal block)
// times s_t, in their masters' dtypes, as the eager path's casts and scaling give them.
// tiles: the pass over the rows on AMX tiles (amx_lora.cpp; d_in and Σ w_t multiples of 32).
std::vector<torch::Tensor> lora_backward(torch::Tensor g, torch::Tensor h, torch::Tensor x,
                                         std::vector<torch::Tensor> a, std::vector<torch::Tensor> b,
                                         std::vector<double> scales, bool with_branch, bool tiles,
                                         bool bf16_dots) {
  const Branches bl(x, a, b, scales);
  const int64_t m = x.size(0), d_in = x.size(1), R = bl.R, N = bl.N;
  check_matrix(g, "grad", m, N); check_matrix(h, "h", m, R);
  auto dh = torch::empty({m, R}, x.options());
  auto branch = torch::empty({with_branch ? m : 0, d_in}, x.options());
  const auto& af = bl.af;
  const auto& bt = bl.bt;
  const bool dp = bf16_dots && !tiles && dp_lora_ready();
  // per thread (the dot products' sums are whole: one part): d_a (R, d_in), then d_bᵀ (R, N)
  const int64_t threads = dp ? 1 : at::get_num_threads(), per = R * (d_in + N);
  std::vector<float> partial(threads * per, 0.f);
  const bf16* gp = g.data_ptr<bf16>();
  const bf16* hp = h.data_ptr<bf16>();
  const bf16* xp = x.data_ptr<bf16>();
  bf16* dhp = dh.data_ptr<bf16>();
  bf16* brp = with_branch ? branch.data_ptr<bf16>() : nullptr;
  auto rows = [&](auto rb, int64_t i, float* gf, float* xf, float* da, float* dbt) {
    constexpr int RB = decltype(rb)::value;
    rows_to_float<RB>(gp + i * N, N, N, gf);
    rows_to_float<RB>(xp + i * d_in, d_in, d_in, xf);
    float dr[RB * kMaxRank];
    for (size_t t = 0; t < bl.r.size(); t++) {
      const int64_t o0 = bl.o0[t], w = bl.w[t];
      in_blocks_of_4(bl.r0[t], bl.r[t], [&](auto jb, int64_t j) {
        constexpr int JB = decltype(jb)::value;
        float d[RB * JB], hc[RB * JB];
        dots<RB, JB>(gf + o0, N, bt.data() + j * N + o0, N, w, d);
        for (int q = 0; q < RB; q++)
          for (int jj = 0; jj < JB; jj++) {
            dhp[(i + q) * R + j + jj] = bf16(d[q * JB + jj]);
            d[q * JB + jj] = dr[q * R + j + jj] = float(dhp[(i + q) * R + j + jj]);
            hc[q * JB + jj] = float(hp[(i + q) * R + j + jj]);
          }
        accumulate<RB, JB>(hc, gf + o0, N, w, dbt + j * N + o0, N);
        accumulate<RB, JB>(d, xf, d_in, d_in, da + j * d_in, d_in);
      });
    }
    if (with_branch) combine<RB>(nullptr, dr, R, R, af.data(), d_in, d_in, brp + i * d_in, d_in);
  };
  if (dp) {
    dp_lora_backward(gp, hp, xp, bl.node(m), af.data(), bt.data(), dhp, brp, partial.data(),
                     partial.data() + R * d_in);
  } else if (tiles) {
    amx_lora_rows(gp, hp, xp, m, N, d_in, R, bt.data(), af.data(), dhp, brp, partial.data(), per);
  } else {
    in_row_blocks(m, d_in + N, [&] {
      float* da = partial.data() + at::get_thread_num() * per;  // this task's sums
      return [&, da, gf = std::vector<float>(kRows * N), xf = std::vector<float>(kRows * d_in)](
                 auto rb, int64_t i) mutable {
        rows(rb, i, gf.data(), xf.data(), da, da + R * d_in);
      };
    });
  }
  // The sums over threads, rounded to bf16 where the eager product rounds them.
  std::vector<float> d_a(R * d_in);
  {
    constexpr int64_t F = fV::size();
    int64_t k = 0;
    for (; k + F <= R * d_in; k += F) {
      fV s0(0.f);
      for (int64_t t = 0; t < threads; t++) s0 = s0 + fV::loadu(partial.data() + t * per + k);
      round_bf16(s0).store(d_a.data() + k);
    }
    for (; k < R * d_in; k++) {
      float v = 0.f;
      for (int64_t t = 0; t < threads; t++) v += partial[t * per + k];
      d_a[k] = Branches::rounded(v);
    }
  }
  std::vector<torch::Tensor> out = {dh, branch};
  for (size_t t = 0; t < bl.r.size(); t++) {  // A_t's rows of d_a, as they are
    auto ga = torch::empty_like(a[t]);
    const float* rows_t = d_a.data() + bl.r0[t] * d_in;
    fill(ga, [&](int64_t i) { return rows_t[i]; });
    out.push_back(ga);
  }
  std::vector<float> d_b;
  for (size_t t = 0; t < bl.r.size(); t++) {  // B_t's diagonal block of d_b, times s_t
    const float scale = static_cast<float>(scales[t]);
    const int64_t rt = bl.r[t], w = bl.w[t];
    d_b.resize(w * rt);
    for (int64_t j = 0; j < rt; j++) {  // row j of the block of d_bᵀ, summed over threads
      const float* row = partial.data() + R * d_in + (bl.r0[t] + j) * N + bl.o0[t];
      int64_t o = 0;
      for (; o + fV::size() <= w; o += fV::size()) {
        fV v(0.f);
        for (int64_t th = 0; th < threads; th++) v = v + fV::loadu(row + th * per + o);
        float sum[fV::size()];
        (round_bf16(v) * fV(scale)).store(sum);
        for (int64_t e = 0; e < fV::size(); e++) d_b[(o + e) * rt + j] = sum[e];
      }
      for (; o < w; o++) {
        float v = 0.f;
        for (int64_t th = 0; th < threads; th++) v += row[th * per + o];
        d_b[o * rt + j] = Branches::rounded(v) * scale;
      }
    }
    auto gb = torch::empty_like(b[t]);
    fill(gb, [&](int64_t i) { return d_b[i]; });
    out.push_back(gb);
  }
  return out;
}

#if defined(__x86_64__)
// Cache lines [begin, end) written back and dropped. clflushopt where the CPU has it: unlike
// clflush, its flushes of different lines overlap (3 MB in 0.2 ms instead of 5.8).
__attribute__((target("clflushopt"))) void flush_lines_unordered(uintptr_t begin, uintptr_t end) {
  for (uintptr_t line = begin; line < end; line += 64) _mm_clflushopt(reinterpret_cast<void*>(line));
  _mm_sfence();
}
void flush_lines(uintptr_t begin, uintptr_t end) {
  for (uintptr_t line = begin; line < end; line += 64) _mm_clflush(reinterpret_cast<void*>(line));
  _mm_mfence();
}
#endif

// Writes t's memory back and drops it from every cache level; false where this build cannot
// (not x86-64). row_split times a frozen product's candidates on a weight and an output evicted
// this way, as a training step meets them: from memory, not from the cache the last timed call
// left them in.
bool evict(torch::Tensor t) {
#if defined(__x86_64__)
  if (t.numel() == 0) return true;
  int64_t span = 1;  // elements from the first to the last (torch's strides are never negative)
  for (int64_t d = 0; d < t.dim(); d++) span += (t.size(d) - 1) * t.stride(d);
  const auto first = reinterpret_cast<uintptr_t>(t.data_ptr()) & ~uintptr_t(63);
  const auto end = reinterpret_cast<uintptr_t>(t.data_ptr()) + span * t.element_size();
  const bool unordered = __builtin_cpu_supports("clflushopt");
  at::parallel_for(0, static_cast<int64_t>((end - first + 63) / 64), 2048, [&](int64_t b, int64_t e) {
    const uintptr_t lo = first + b * 64, hi = std::min<uintptr_t>(end, first + e * 64);
    unordered ? flush_lines_unordered(lo, hi) : flush_lines(lo, hi);
  });
  return true;
#else
  (void)t;
  return false;
#endif
}

constexpr int64_t kColumns = 64;  // columns a backward task sums over every row

void check_rows(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kBFloat16 && t.is_contiguous() &&
              t.dim() == 2, name, " must be a contiguous 2-D bf16 CPU tensor");
}

void check_scale(const torch::Tensor& c, int64_t n) {
  TORCH_CHECK(c.device().is_cpu() && c.scalar_type() == at::kFloat && c.is_contiguous() &&
              c.dim() == 1 && c.size(0) == n, "scale must be a contiguous fp32 CPU vector of ",
              n, " columns");
}

// DoRA's column scale (dora.py's DoraScale): out = bf16(y * c), c fp32 per column; backward
// dy = bf16(g * c) and the magnitude's fp32 sum over the rows of g * y. torch runs bf16 times
// fp32 as a per-element cast loop into an fp32 result and a copy back (a demo DoRA step
// 0.92-0.97x the time with these).
torch::Tensor dora_scale(torch::Tensor y, torch::Tensor c) {
  check_rows(y, "y");
  const int64_t m = y.size(0), n = y.size(1), W = bV::size(), H = fV::size();
  check_scale(c, n);
  auto out = torch::empty_like(y);
  const bf16* yp = y.data_ptr<bf16>();
  const float* cp = c.data_ptr<float>();
  bf16* op = out.data_ptr<bf16>();
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(n, 1));
  at::parallel_for(0, m, grain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) {
      const bf16* yr = yp + i * n;
      bf16* orow = op + i * n;
      int64_t k = 0;
      for (; k + W <= n; k += W) {
        auto [y0, y1] = load(yr + k);
        store(orow + k, y0 * fV::loadu(cp + k), y1 * fV::loadu(cp + k + H));
      }
      for (; k < n; k++) orow[k] = bf16(float(yr[k]) * cp[k]);
    }
  });
  return out;
}

// (dy or an empty tensor where with_dy is false, the fp32 column sums of g * y)
std::tuple<torch::Tensor, torch::Tensor> dora_scale_backward(torch::Tensor g, torch::Tensor y,
                                                              torch::Tensor c, bool with_dy) {
  check_rows(g, "gradient"); check_rows(y, "y");
  TORCH_CHECK(g.sizes() == y.sizes(), "gradient and y differ in shape");
  const int64_t m = g.size(0), n = g.size(1), W = bV::size(), H = fV::size();
  check_scale(c, n);
  auto dy = with_dy ? torch::empty_like(g) : torch::empty({0}, g.options());
  auto sums = torch::empty({n}, c.options());
  const bf16* gp = g.data_ptr<bf16>();
  const bf16* yp = y.data_ptr<bf16>();
  const float* cp = c.data_ptr<float>();
  bf16* dp = with_dy ? dy.data_ptr<bf16>() : nullptr;
  float* sp = sums.data_ptr<float>();
  const int64_t blocks = (n + kColumns - 1) / kColumns;
  // A task takes a block of columns down every row: each column summed in row order, in fp32.
  at::parallel_for(0, blocks, 1, [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; blk++) {
      const int64_t k0 = blk * kColumns, k1 = std::min(n, k0 + kColumns);
      alignas(64) float acc[kColumns] = {};
      for (int64_t t = 0; t < m; t++) {
        const bf16* gr = gp + t * n;
        const bf16* yr = yp + t * n;
        int64_t k = k0;
        for (; k + W <= k1; k += W) {
          auto [g0, g1] = load(gr + k);
          auto [y0, y1] = load(yr + k);
          float* a = acc + (k - k0);
          (fV::loadu(a) + g0 * y0).store(a);
          (fV::loadu(a + H) + g1 * y1).store(a + H);
          if (dp != nullptr)
            store(dp + t * n + k, g0 * fV::loadu(cp + k), g1 * fV::loadu(cp + k + H));
        }
        for (; k < k1; k++) {
          const float gk = float(gr[k]);
          acc[k - k0] += gk * float(yr[k]);
          if (dp != nullptr) dp[t * n + k] = bf16(gk * cp[k]);
        }
      }
      std::copy(acc, acc + (k1 - k0), sp + k0);
    }
  });
  return {dy, sums};
}

// The gradient-norm clip's two passes over a step's trainable gradients (train/grad_clip.py).
// torch's clip_grad_norm_ on CPU dispatches a norm per tensor and a multiply per tensor
// (~850 ops for the demo's 420 LoRA tensors); here each pass is one call over all of them.
// Grads that are not all contiguous fp32 CPU tensors: -1 (the caller runs torch's).
double grad_sum_squares(const std::vector<torch::Tensor>& grads) {
  for (const auto& g : grads)
    if (!g.device().is_cpu() || g.scalar_type() != at::kFloat || !g.is_contiguous()) return -1.0;
  const int64_t n = static_cast<int64_t>(grads.size());
  std::vector<double> sums(n, 0.0);
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; t++) {
      const float* p = grads[t].data_ptr<float>();
      const int64_t m = grads[t].numel();
      fV a0(0.f), a1(0.f);  // two chains, so that each FMA need not wait for the last
      int64_t i = 0;
      for (; i + 2 * fV::size() <= m; i += 2 * fV::size()) {
        fV x0 = fV::loadu(p + i), x1 = fV::loadu(p + i + fV::size());
        a0 = at::vec::fmadd(x0, x0, a0);
        a1 = at::vec::fmadd(x1, x1, a1);
      }
      double s = hsum(a0 + a1);
      for (; i < m; i++) s += double(p[i]) * p[i];
      sums[t] = s;
    }
  });
  double total = 0.0;
  for (double s : sums) total += s;  // in the tensors' order: the same sum on every run
  return total;
}

// g *= c for every gradient (fp32 contiguous CPU, as grad_sum_squares took them).
void grad_scale_(const std::vector<torch::Tensor>& grads, double c) {
  const float cf = static_cast<float>(c);
  const int64_t n = static_cast<int64_t>(grads.size());
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; t++) {
      float* p = grads[t].data_ptr<float>();
      const int64_t m = grads[t].numel();
      int64_t i = 0;
      for (; i + fV::size() <= m; i += fV::size()) (fV::loadu(p + i) * fV(cf)).store(p + i);
      for (; i < m; i++) p[i] *= cf;
    }
  });
}

}  // namespace

void register_amx_gemm(pybind11::module& m);       // amx_gemm.cpp
void register_causal_attention(pybind11::module& m);  // causal_attention.cpp
void register_amx_head(pybind11::module& m);       // amx_head.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  register_amx_gemm(m);
  register_causal_attention(m);
  register_amx_head(m);
  m.def("swiglu_forward", &swiglu_forward);
  m.def("swiglu_backward", &swiglu_backward);
  m.def("rms_norm_forward", &rms_norm_forward);
  m.def("rms_norm_backward", &rms_norm_backward);
  m.def("rope", &rope);
  m.def("dropout_scale", &dropout_scale);
  m.def("causal_softmax", &causal_softmax);
  m.def("causal_softmax_backward", &causal_softmax_backward);
  m.def("gather_rows", &gather_rows);
  m.def("add_copies_", &add_copies_);
  m.def("softmax_nll_", &softmax_nll_);
  m.def("dora_scale", &dora_scale);
  m.def("dora_scale_backward", &dora_scale_backward);
  // bf16_dots: AVX512-BF16 dot products where the CPU has them (dp_lora.cpp); False, the fp32
  // pass. The fast paths choose (lora_linear._bf16_dots).
  m.def("lora_forward_", &lora_forward_, pybind11::arg("out"), pybind11::arg("x"),
        pybind11::arg("a"), pybind11::arg("b"), pybind11::arg("scales"),
        pybind11::arg("bf16_dots") = true);
  m.def("lora_operands", &lora_operands, pybind11::arg("x"), pybind11::arg("a"), pybind11::arg("b"),
        pybind11::arg("scales"), pybind11::arg("bf16_dots") = true);
  m.def("lora_backward", &lora_backward, pybind11::arg("g"), pybind11::arg("h"),
        pybind11::arg("x"), pybind11::arg("a"), pybind11::arg("b"), pybind11::arg("scales"),
        pybind11::arg("with_branch"), pybind11::arg("tiles") = false,
        pybind11::arg("bf16_dots") = true);
  m.def("dp_ready", &dp_lora_ready);
  m.def("evict", &evict);
  m.def("grad_sum_squares", &grad_sum_squares);
  m.def("grad_scale_", &grad_scale_);
}
