// Whisper's logits rules for a batch on the GPU, in place, one thread block per row and no host round trip:
// the suppress lists become a bitmask over the vocabulary in shared memory, the timestamp rules are intervals
// computed from the row's history, and one pass over the row applies both while reducing the text maximum and
// the timestamp logsumexp for the logsumexp rule. Same semantics as cpu/logits_ops.cpp.
#include <algorithm>

#include "../checks.h"
#include "../dispatch.h"
#include "../ops.h"
#include "cuda_utils.h"

namespace vllm_whisper {
namespace {

constexpr int kThreads = 512;
constexpr int64_t kMaxVocabForSharedMask = 40 * 1024 * 8;  // one bit per token, within 48 KiB of shared memory

struct Strides2 {
  int64_t row, col;
};

__device__ __forceinline__ void mark(uint32_t* mask, int64_t vocab, int64_t token) {
  if (token >= 0 && token < vocab) atomicOr(&mask[token >> 5], 1u << (token & 31));
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    whisper_logits_rules_kernel(scalar_t* __restrict__ logits, int64_t logits_row_stride, int64_t vocab,
                                const int64_t* __restrict__ tokens, Strides2 tok, int64_t max_len,
                                const int64_t* __restrict__ lens, int64_t lens_stride,
                                const int64_t* __restrict__ cfg, Strides2 cfg_s,
                                const int64_t* __restrict__ suppress, Strides2 sup, int64_t num_suppress,
                                const int64_t* __restrict__ begin_suppress, Strides2 bsup,
                                int64_t num_begin_suppress) {
  extern __shared__ uint32_t banned[];  // ceil(vocab / 32) words
  __shared__ int last_stamp_index;
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  scalar_t* x = logits + row * logits_row_stride;
  const int64_t* hist = tokens + row * tok.row;
  const int64_t* c = cfg + row * cfg_s.row;
  const int64_t eot = c[kEot * cfg_s.col], no_ts = c[kNoTimestamps * cfg_s.col];
  const int64_t begin = c[kTimestampBegin * cfg_s.col];
  const bool timestamps = c[kTimestamps * cfg_s.col] != 0, suppress_blank = c[kSuppressBlank * cfg_s.col] != 0;
  const int64_t max_initial = c[kMaxInitialTimestamp * cfg_s.col];
  const int64_t n = min(max(lens[row * lens_stride], int64_t(0)), max_len);
  const bool first = n == 0;

  const int64_t words = (vocab + 31) / 32;
  for (int64_t w = threadIdx.x; w < words; w += blockDim.x) banned[w] = 0u;
  if (threadIdx.x == 0) last_stamp_index = -1;
  __syncthreads();
  for (int64_t k = threadIdx.x; k < num_suppress; k += blockDim.x) {
    mark(banned, vocab, suppress[row * sup.row + k * sup.col]);
  }
  if (suppress_blank && first) {
    for (int64_t k = threadIdx.x; k < num_begin_suppress; k += blockDim.x) {
      mark(banned, vocab, begin_suppress[row * bsup.row + k * bsup.col]);
    }
  }
  if (timestamps) {
    if (threadIdx.x == 0) mark(banned, vocab, no_ts);
    int found = -1;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      if (hist[i * tok.col] >= begin) found = static_cast<int>(i);
    }
    if (found >= 0) atomicMax(&last_stamp_index, found);
  }
  __syncthreads();

  // Forbidden intervals [lo, hi) from the timestamp rules (empty when hi <= lo).
  const int64_t ts = min(max(begin, int64_t(0)), vocab);
  int64_t text_hi = 0;          // text tokens [0, text_hi) forbidden
  int64_t ts_lo = ts, ts_hi = ts;  // timestamps [ts_lo, ts_hi) forbidden ...
  int64_t ts_tail = vocab;         // ... and [ts_tail, vocab)
  if (timestamps) {
    const bool last_ts = n >= 1 && hist[(n - 1) * tok.col] >= begin;
    const bool penult_ts = n < 2 || hist[(n - 2) * tok.col] >= begin;
    if (last_ts && penult_ts) ts_tail = ts;
    if (last_ts && !penult_ts) text_hi = min(eot, vocab);
    if (last_stamp_index >= 0) {
      const int64_t stamp = hist[last_stamp_index * tok.col];
      ts_hi = min(last_ts && !penult_ts ? stamp : stamp + 1, vocab);
    }
    if (first) {
      text_hi = ts;
      if (max_initial >= 0) ts_tail = min(ts_tail, max(min(begin + max_initial + 1, vocab), ts));
    }
  }

  const scalar_t neg_inf = static_cast<scalar_t>(-INFINITY);
  float max_text = -INFINITY, run_max = -INFINITY, run_sum = 0.0f;  // run_*: online logsumexp of timestamps
  for (int64_t col = threadIdx.x; col < vocab; col += blockDim.x) {
    const bool forbid = ((banned[col >> 5] >> (col & 31)) & 1u) || col < text_hi || (col >= ts_lo && col < ts_hi) ||
                        col >= ts_tail;
    float v;
    if (forbid) {
      x[col] = neg_inf;
      v = -INFINITY;
    } else {
      v = static_cast<float>(x[col]);
    }
    if (timestamps) {
      if (col < ts) {
        max_text = fmaxf(max_text, v);
      } else if (v > run_max) {
        run_sum = run_sum * expf(run_max - v) + 1.0f;  // exp(-inf) = 0 on the first finite value
        run_max = v;
      } else if (v != -INFINITY) {
        run_sum += expf(v - run_max);
      }
    }
  }
  if (!timestamps) return;  // uniform per block: no thread is left waiting at a barrier
  max_text = cuda::block_max(max_text, scratch);
  const float ts_max = cuda::block_max(run_max, scratch);
  if (ts_max == -INFINITY) return;  // no timestamp allowed: nothing to force (uniform per block)
  const float scaled = run_max == -INFINITY ? 0.0f : run_sum * expf(run_max - ts_max);
  const float ts_sum = cuda::block_sum(scaled, scratch);
  const float ts_logsumexp = ts_max + logf(ts_sum);
  if (ts_logsumexp > max_text) {
    for (int64_t col = threadIdx.x; col < ts; col += blockDim.x) x[col] = neg_inf;
  }
}

}  // namespace

void apply_whisper_logits_rules_cuda(at::Tensor& logits, const at::Tensor& output_tokens,
                                     const at::Tensor& output_lens, const at::Tensor& row_config,
                                     const at::Tensor& suppress_tokens, const at::Tensor& begin_suppress_tokens) {
  check_whisper_logits_rules(logits, output_tokens, output_lens, row_config, suppress_tokens, begin_suppress_tokens);
  const int64_t batch = logits.size(0), vocab = logits.size(1);
  if (batch == 0 || vocab == 0) return;
  TORCH_CHECK(vocab <= kMaxVocabForSharedMask, "apply_whisper_logits_rules: vocab ", vocab, " exceeds ",
              kMaxVocabForSharedMask);
  TORCH_CHECK(output_tokens.size(1) < (int64_t(1) << 31), "apply_whisper_logits_rules: history too long");
  TORCH_CHECK(batch <= 2147483647, "apply_whisper_logits_rules: batch too large");
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const size_t shared = static_cast<size_t>((vocab + 31) / 32) * sizeof(uint32_t);
  VW_DISPATCH_FLOATING(logits.scalar_type(), scalar_t, "apply_whisper_logits_rules", [&] {
    whisper_logits_rules_kernel<scalar_t><<<static_cast<unsigned>(batch), kThreads, shared, stream>>>(
        logits.mutable_data_ptr<scalar_t>(), logits.stride(0), vocab, output_tokens.const_data_ptr<int64_t>(),
        Strides2{output_tokens.stride(0), output_tokens.stride(1)}, output_tokens.size(1),
        output_lens.const_data_ptr<int64_t>(), output_lens.stride(0), row_config.const_data_ptr<int64_t>(),
        Strides2{row_config.stride(0), row_config.stride(1)}, suppress_tokens.const_data_ptr<int64_t>(),
        Strides2{suppress_tokens.stride(0), suppress_tokens.stride(1)}, suppress_tokens.size(1),
        begin_suppress_tokens.const_data_ptr<int64_t>(),
        Strides2{begin_suppress_tokens.stride(0), begin_suppress_tokens.stride(1)}, begin_suppress_tokens.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace vllm_whisper
