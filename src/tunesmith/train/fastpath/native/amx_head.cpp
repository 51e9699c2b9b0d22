// The loss's last step (loss/head_ce.py) on AMX tiles: the frozen vocabulary head, its
// cross-entropy and the gradient for the hidden states in one pass over the head's weight,
// without the logits ever leaving the cache.
//
// Through torch the head writes an (N, V) bf16 logits tensor (V = 49,152 on the demo's model),
// the softmax kernel reads and rewrites it as softmax - onehot, and the backward's product
// reads it again: each larger than L2, and oneDNN packs the 56 MB weight anew for each of the
// two products. Here the weight is read in chunks of kVocab rows: a chunk's logits for a block
// of rows go to an fp32 buffer in cache, each row's running maximum and sum take them in (the
// online softmax of flash attention), their exps (rounded to bf16) times the chunk's rows are
// added to the row's gradient accumulator (rescaled where the running maximum rose), and the
// target's logit is kept. At the end, per row:
//   nll = m + log(sum) - logit[target],   dh = acc / sum - W[target]
// which is sum_v softmax_v W_v - W_target, the gradient of the row's nll for h.
//
// The vocabulary is split into slices, one per thread where memory allows (each with its own
// maxima, sums and accumulators, combined at the end), and the work into tasks of a slice and
// a block of kRowBlock rows; a task reads its slice of the weight once, packing each chunk
// into the two products' operand layouts in cache (a copy of the
// whole weight packed ahead, read from memory instead, measured no faster: 10.8 against
// 9.5 ms for 128 rows of the demo's head). Scratch rows are 64-byte aligned (malloc's 16
// bytes put each tile row across two cache lines: 1.1-1.6x the time).
//
// Values: logits and the softmax are fp32 (torch's path rounds the logits to bf16 first), the
// exps are rounded to bf16 for the product as torch's path rounds softmax - onehot. The
// vocabulary's split follows the thread count, so results differ across thread counts by
// rounding, as oneDNN's products do.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "amx.h"

namespace {

using bf16 = c10::BFloat16;
constexpr int64_t kVocab = 128;     // weight rows per chunk: the gradient product's K
constexpr int64_t kRowBlock = 256;  // rows of h per pass over a slice of the weight
constexpr int64_t kMaxSlices = 64;  // vocabulary slices at most (finish_row's factors)

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// One vocabulary slice's online softmax state for a block's rows: their running maxima, sums and
// gradient accumulators (rows x k fp32, rounded up to 32 rows: the products write whole tiles).
struct Partial {
  float* max;
  float* sum;
  float* acc;
};

#ifdef TUNESMITH_AMX
using namespace tunesmith_amx;  // amx.h: the tile setup, packing and exp both kernels use

// A thread's buffers: a row block's rows, logits and exps, and the chunk of the weight packed
// for the two products.
struct Scratch {
  Aligned<bf16> hpad, p, chunk;
  Aligned<float> s;
  explicit Scratch(int64_t k)
      : hpad(kRowBlock * k), p(kRowBlock * kVocab), chunk(2 * kVocab * k), s(kRowBlock * kVocab) {}
};

// The weight's chunk c in the two B operands the products take, each chunk kVocab rows (the
// last padded with zero rows): [k/2][kVocab][2] for the logits (W^T's pairs) then
// [kVocab/2][k][2] for the gradient (W's row pairs).
AMX_TARGET void pack_chunk(const bf16* w, int64_t vocab, int64_t k, int64_t c, bf16* out) {
  const int64_t v0 = c * kVocab, nv = std::min(kVocab, vocab - v0);
  pack_pairs_transposed(w + v0 * k, k, nv, k, kVocab, out);
  pack_row_pairs(w + v0 * k, k, nv, k, kVocab, out + kVocab * k);
}

// One row's logits over a chunk of nv (<= kVocab) vocabulary entries into its running state;
// its exps (against the new maximum) as bf16 into p, zeros from nv to kVocab.
AMX_TARGET void take_chunk(const float* s, int64_t nv, float& max, float& sum, float* acc, int64_t k,
                           bf16* p) {
  __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < nv; j += 16) vmax = _mm512_mask_max_ps(vmax, first(nv - j), vmax, _mm512_loadu_ps(s + j));
  const float top = _mm512_reduce_max_ps(vmax);
  if (top > max) {  // the accumulator and sum were against the old maximum
    if (sum > 0) {
      const float f = std::exp(max - top);
      const __m512 vf = _mm512_set1_ps(f);
      for (int64_t e = 0; e < k; e += 16) _mm512_storeu_ps(acc + e, _mm512_mul_ps(_mm512_loadu_ps(acc + e), vf));
      sum *= f;
    }
    max = top;
  }
  const __m512 mx = _mm512_set1_ps(max);
  __m512 total = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j < nv; j += 16) {
    const __m512 x = _mm512_maskz_mov_ps(first(nv - j), exp_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), mx)));
    total = _mm512_add_ps(total, x);
    store_bf16(p + j, x);
  }
  for (; j < kVocab; j += 16) store_bf16(p + j, _mm512_setzero_ps());
  sum += _mm512_reduce_add_ps(total);
}

// Rows [r0, r0 + rows) of h against weight rows [v0, v1): the thread's partial state for them
// (maxima -inf, sums 0 and accumulators 0 on entry) and the target logits that fall in [v0, v1).
AMX_TARGET void slice_block(const bf16* h, const bf16* w, int64_t vocab, const int64_t* targets, int64_t k,
                            int64_t r0, int64_t rows, int64_t v0, int64_t v1, Partial part,
                            float* logit, Scratch& ws) {
  const int64_t rows_pad = round_up(rows, 32);
  std::memcpy(ws.hpad.data(), h + r0 * k, rows * k * sizeof(bf16));
  std::memset(ws.hpad.data() + rows * k, 0, (rows_pad - rows) * k * sizeof(bf16));
  std::memset(ws.p.data() + rows * kVocab, 0, (rows_pad - rows) * kVocab * sizeof(bf16));
  for (int64_t c = v0; c < v1; c += kVocab) {
    const int64_t nv = std::min(kVocab, v1 - c);
    pack_chunk(w, vocab, k, c / kVocab, ws.chunk.data());
    const bf16* wt = ws.chunk.data();
    const bf16* wp = wt + kVocab * k;
    tile_mm(ws.hpad.data(), k, wt, 2 * kVocab, ws.s.data(), kVocab, rows_pad, kVocab, k, false);
    for (int64_t i = 0; i < rows; i++) {
      const float* si = ws.s.data() + i * kVocab;
      take_chunk(si, nv, part.max[i], part.sum[i], part.acc + i * k, k, ws.p.data() + i * kVocab);
      const int64_t t = targets[r0 + i] - c;
      if (t >= 0 && t < nv) logit[r0 + i] = si[t];
    }
    tile_mm(ws.p.data(), kVocab, wp, 2 * k, part.acc, k, rows_pad, k, kVocab, true);
  }
}

// Tasks [first, last) of slices x row blocks: task j is row block j % blocks against slice
// j / blocks of the vocabulary, [slice_start(t), slice_start(t + 1)).
struct Tasks {
  const bf16* h;
  const bf16* w;
  const int64_t* targets;
  int64_t m, m_pad, k, vocab, chunks, slices, blocks;
  float *max, *sum, *acc, *logit;
  int64_t slice_start(int64_t t) const { return std::min(vocab, chunks * t / slices * kVocab); }
};

AMX_TARGET void run_tasks(const Tasks& job, int64_t first, int64_t last) {
  configure_tiles();
  Scratch ws(job.k);
  for (int64_t j = first; j < last; j++) {
    const int64_t t = j / job.blocks, r0 = j % job.blocks * kRowBlock;
    const Partial part{job.max + t * job.m + r0, job.sum + t * job.m + r0, job.acc + (t * job.m_pad + r0) * job.k};
    slice_block(job.h, job.w, job.vocab, job.targets, job.k, r0, std::min(kRowBlock, job.m - r0),
                job.slice_start(t), job.slice_start(t + 1), part, job.logit, ws);
  }
  _tile_release();
}

// Row i's state from every slice: nll and dh = acc / sum - W[target], rounded once.
AMX_TARGET void finish_row(int64_t i, int64_t slices, int64_t m, int64_t m_pad, int64_t k, const float* max,
                           const float* sum, const float* acc, const float* logit, const bf16* w,
                           const int64_t* targets, float* nll, bf16* dh) {
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < slices; t++) top = std::max(top, max[t * m + i]);
  float total = 0;
  float f[kMaxSlices];
  for (int64_t t = 0; t < slices; t++) {
    f[t] = sum[t * m + i] > 0 ? std::exp(max[t * m + i] - top) : 0.f;
    total += f[t] * sum[t * m + i];
  }
  nll[i] = top + std::log(total) - logit[i];
  const bf16* wt = w + targets[i] * k;
  for (int64_t e = 0; e < k; e += 16) {
    __m512 g = _mm512_setzero_ps();
    for (int64_t t = 0; t < slices; t++)
      g = _mm512_fmadd_ps(_mm512_loadu_ps(acc + (t * m_pad + i) * k + e), _mm512_set1_ps(f[t] / total), g);
    const __m512 target = _mm512_cvtpbh_ps((__m256bh)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + e)));
    store_bf16(dh + i * k + e, _mm512_sub_ps(g, target));
  }
}
#endif

void check_weight(const torch::Tensor& weight) {
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kBFloat16 && weight.dim() == 2 &&
                  weight.is_contiguous() && weight.size(0) > 0,
              "amx head nll: the weight must be a contiguous, non-empty 2-D bf16 CPU tensor");
  TORCH_CHECK(weight.size(1) % 32 == 0 && weight.size(1) > 0,
              "amx head nll: the hidden size must be a multiple of 32, got ", weight.size(1));
#ifdef TUNESMITH_AMX
  TORCH_CHECK(tunesmith_amx::ready(), "amx head nll: this CPU or kernel gives no AMX bf16 tiles");
#else
  TORCH_CHECK(false, "amx head nll: not built with AMX");
#endif
}

int64_t chunks_of(const torch::Tensor& weight) { return (weight.size(0) + kVocab - 1) / kVocab; }

// (nll (M,) fp32, dh (M, K) bf16): each row's -log_softmax(h W^T)[target] and its gradient
// for h, softmax(h W^T) W - W[target]. h: (M, K) and weight: (V, K), contiguous bf16 on CPU,
// K a multiple of 32; targets: (M,) int64 in [0, V).
std::vector<torch::Tensor> amx_head_nll(torch::Tensor h, torch::Tensor weight, torch::Tensor targets) {
  check_weight(weight);
  TORCH_CHECK(h.device().is_cpu() && h.scalar_type() == at::kBFloat16 && h.dim() == 2 && h.is_contiguous(),
              "amx head nll: h must be a contiguous 2-D bf16 CPU tensor");
  TORCH_CHECK(targets.device().is_cpu() && targets.scalar_type() == at::kLong && targets.dim() == 1 &&
                  targets.is_contiguous(),
              "amx head nll: targets must be a contiguous 1-D int64 CPU tensor");
  const int64_t m = h.size(0), k = h.size(1), vocab = weight.size(0), chunks = chunks_of(weight);
  TORCH_CHECK(weight.size(1) == k && targets.size(0) == m, "amx head nll: h ", h.sizes(), ", weight ",
              weight.sizes(), ", targets ", targets.sizes(), " do not match");
  const int64_t* tg = targets.data_ptr<int64_t>();
  for (int64_t i = 0; i < m; i++)
    TORCH_CHECK(tg[i] >= 0 && tg[i] < vocab, "amx head nll: target ", i, " is ", tg[i],
                ", outside the vocabulary [0, ", vocab, ")");
  auto nll = torch::empty({m}, h.options().dtype(at::kFloat));
  auto dh = torch::empty_like(h);
  if (m == 0) return {nll, dh};
#ifdef TUNESMITH_AMX
  // A slice per thread, but the slices' accumulators (slices x M x K fp32) no larger than the
  // (M, V) bf16 logits the torch path writes: a wide hidden size takes fewer slices, and its
  // threads share out the row blocks instead.
  const int64_t slices = std::max<int64_t>(
      1, std::min({chunks, kMaxSlices, static_cast<int64_t>(at::get_num_threads()), vocab / (2 * k)}));
  const auto f32 = h.options().dtype(at::kFloat);
  auto max = torch::full({slices, m}, -std::numeric_limits<float>::infinity(), f32);
  auto sum = torch::zeros({slices, m}, f32);
  const int64_t m_pad = round_up(m, 32);
  auto acc = torch::zeros({slices, m_pad, k}, f32);
  auto logit = torch::empty({m}, f32);
  const bf16* hp = h.data_ptr<bf16>();
  const bf16* w = weight.data_ptr<bf16>();
  float* mx = max.data_ptr<float>();
  float* sm = sum.data_ptr<float>();
  float* ac = acc.data_ptr<float>();
  float* lg = logit.data_ptr<float>();
  const Tasks job{hp, w, tg, m, m_pad, k, vocab, chunks, slices, (m + kRowBlock - 1) / kRowBlock, mx, sm, ac, lg};
  at::parallel_for(0, slices * job.blocks, 1,
                   [&](int64_t first_task, int64_t last_task) { run_tasks(job, first_task, last_task); });
  at::parallel_for(0, m, 16, [&](int64_t first_row, int64_t last_row) {
    for (int64_t i = first_row; i < last_row; i++)
      finish_row(i, slices, m, m_pad, k, mx, sm, ac, lg, w, tg, nll.data_ptr<float>(), dh.data_ptr<bf16>());
  });
#endif
  return {nll, dh};
}

}  // namespace

void register_amx_head(pybind11::module& m) {
  m.def("amx_head_nll", &amx_head_nll);
}
