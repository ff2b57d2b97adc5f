// CPU cross attention for the decoder: each row's queries attend over the window slot it reads, its first lens[b]
// frames, straight from the slot pool (no gather, no per-row framework call). A decode step streams every row's
// whole slot (1500 frames x heads x head_dim, K and V, per layer), so on the CPU the step is bound by those bytes:
// a bfloat16 cache halves them, and this kernel widens each bfloat16 value to float32 as it reads it (a 16-bit
// shift), so scores, softmax and the weighted sum are float32 whatever the cache holds.
// Layouts: vllm_whisper/attention/kv_cache_layout.py; the torch reference is kernels/cross_attention.py's
// cross_attention_reference.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../ops.h"

namespace vllm_whisper {
namespace {

inline float widen(float x) { return x; }
inline float widen(uint16_t bf16) {
  const uint32_t bits = static_cast<uint32_t>(bf16) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// One (row, head): queries q (tokens x dim, float32) over n frames of keys/values (n x dim, float32 or bfloat16
// bits), out (tokens x dim). scores: scratch of n floats.
template <typename kv_t>
inline void attend_one(const float* q, int64_t q_token_stride, const kv_t* keys, const kv_t* values, int64_t tokens,
                       int64_t n, int64_t dim, float scale, float* scores, float* out, int64_t out_token_stride) {
  for (int64_t t = 0; t < tokens; ++t) {
    const float* qt = q + t * q_token_stride;
    float best = -std::numeric_limits<float>::infinity();
    for (int64_t f = 0; f < n; ++f) {
      const kv_t* k = keys + f * dim;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < dim; ++d) dot += qt[d] * widen(k[d]);
      scores[f] = dot * scale;
      best = std::max(best, scores[f]);
    }
    float total = 0.0f;
#pragma omp simd reduction(+ : total)
    for (int64_t f = 0; f < n; ++f) {
      scores[f] = std::exp(scores[f] - best);
      total += scores[f];
    }
    float* ot = out + t * out_token_stride;
    std::fill(ot, ot + dim, 0.0f);
    for (int64_t f = 0; f < n; ++f) {
      const kv_t* v = values + f * dim;
      const float p = scores[f];
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) ot[d] += p * widen(v[d]);
    }
    const float inv = 1.0f / total;
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) ot[d] *= inv;
  }
}

// The hot loop, compiled for AVX-512, AVX2 and baseline x86-64; the loader picks the best the CPU has (the
// extension itself is built without -march so it runs on any x86-64).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VW_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VW_CPU_CLONES
#endif

VW_CPU_CLONES void attend_f32(const float* q, int64_t qs, const float* k, const float* v, int64_t tokens, int64_t n,
                              int64_t dim, float scale, float* scores, float* out, int64_t os) {
  attend_one(q, qs, k, v, tokens, n, dim, scale, scores, out, os);
}

VW_CPU_CLONES void attend_bf16(const float* q, int64_t qs, const uint16_t* k, const uint16_t* v, int64_t tokens,
                               int64_t n, int64_t dim, float scale, float* scores, float* out, int64_t os) {
  attend_one(q, qs, k, v, tokens, n, dim, scale, scores, out, os);
}

}  // namespace

at::Tensor cross_attention_cpu(const at::Tensor& q, const at::Tensor& key_cache, const at::Tensor& value_cache,
                               const at::Tensor& slots, const at::Tensor& lens, double scale) {
  constexpr const char* op = "cross_attention";
  TORCH_CHECK(q.dim() == 4 && q.scalar_type() == at::ScalarType::Float, op,
              ": q must be float32 (batch, heads, tokens, head_dim), got ", q.scalar_type(), " with ", q.dim(),
              " dims");
  TORCH_CHECK(key_cache.dim() == 4 && key_cache.sizes() == value_cache.sizes(), op,
              ": key_cache and value_cache must both be (num_slots, heads, frames, head_dim)");
  TORCH_CHECK(key_cache.is_contiguous() && value_cache.is_contiguous(), op, ": the caches must be contiguous");
  const auto cache_type = key_cache.scalar_type();
  TORCH_CHECK(value_cache.scalar_type() == cache_type &&
                  (cache_type == at::ScalarType::Float || cache_type == at::ScalarType::BFloat16),
              op, ": the caches must both be float32 or both bfloat16, got ", cache_type, " and ",
              value_cache.scalar_type());
  const int64_t batch = q.size(0), heads = q.size(1), tokens = q.size(2), dim = q.size(3);
  const int64_t num_slots = key_cache.size(0), frames = key_cache.size(2);
  TORCH_CHECK(key_cache.size(1) == heads && key_cache.size(3) == dim, op, ": caches of ", key_cache.size(1),
              " heads x ", key_cache.size(3), " do not fit queries of ", heads, " heads x ", dim);
  TORCH_CHECK(slots.dim() == 1 && slots.size(0) == batch && slots.scalar_type() == at::ScalarType::Long, op,
              ": slots must be int64 with one entry per row (", batch, ")");
  TORCH_CHECK(lens.dim() == 1 && lens.size(0) == batch && lens.scalar_type() == at::ScalarType::Long, op,
              ": lens must be int64 with one entry per row (", batch, ")");
  const at::Tensor s = slots.contiguous(), l = lens.contiguous();
  const int64_t* slot_of = s.const_data_ptr<int64_t>();
  const int64_t* len_of = l.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(slot_of[b] >= 0 && slot_of[b] < num_slots, op, ": slot ", slot_of[b], " of row ", b,
                " is out of range (the cache has ", num_slots, ")");
    TORCH_CHECK(len_of[b] >= 1 && len_of[b] <= frames, op, ": row ", b, " reads ", len_of[b],
                " frames; a slot holds 1 to ", frames);
  }
  const at::Tensor query = q.stride(3) == 1 ? q : q.contiguous();
  at::Tensor out = at::empty({batch, heads, tokens, dim}, q.options());
  const float* q_data = query.const_data_ptr<float>();
  float* out_data = out.mutable_data_ptr<float>();
  const int64_t qb = query.stride(0), qh = query.stride(1), qt = query.stride(2);
  const int64_t slot_stride = heads * frames * dim, head_stride = frames * dim;
  const float softmax_scale = static_cast<float>(scale);
  const bool bf16 = cache_type == at::ScalarType::BFloat16;
  const void* k_data = key_cache.const_data_ptr();
  const void* v_data = value_cache.const_data_ptr();
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(frames);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / heads, h = task % heads;
      const int64_t offset = slot_of[b] * slot_stride + h * head_stride;
      const float* qp = q_data + b * qb + h * qh;
      float* op_ = out_data + (b * heads + h) * tokens * dim;
      if (bf16) {
        attend_bf16(qp, qt, static_cast<const uint16_t*>(k_data) + offset, static_cast<const uint16_t*>(v_data) + offset,
                    tokens, len_of[b], dim, softmax_scale, scores.data(), op_, dim);
      } else {
        attend_f32(qp, qt, static_cast<const float*>(k_data) + offset, static_cast<const float*>(v_data) + offset,
                   tokens, len_of[b], dim, softmax_scale, scores.data(), op_, dim);
      }
    }
  });
  return out;
}

}  // namespace vllm_whisper
