// Whisper's logits rules for a whole batch on the CPU, in place: suppress blank (first sampled token),
// suppress tokens, and for timestamp rows no <|notimestamps|>, paired timestamps, monotonic timestamps, the
// initial-timestamp rule and the logsumexp rule. Matches vllm_whisper/sampling/batched.py (the batched torch
// version, the op's fallback) and sampling/reference.py (the per-row reference). One task per row; nothing returns
// to Python.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../checks.h"
#include "../dispatch.h"
#include "../ops.h"

namespace vllm_whisper {
namespace {

template <typename scalar_t>
inline void fill_neg_inf(scalar_t* x, int64_t begin, int64_t end) {
  const scalar_t neg_inf = static_cast<scalar_t>(-std::numeric_limits<float>::infinity());
  for (int64_t c = std::max<int64_t>(begin, 0); c < end; ++c) x[c] = neg_inf;
}

template <typename scalar_t>
void suppress_list(scalar_t* x, int64_t vocab, const at::TensorAccessor<const int64_t, 1>& ids) {
  const scalar_t neg_inf = static_cast<scalar_t>(-std::numeric_limits<float>::infinity());
  for (int64_t k = 0; k < ids.size(0); ++k) {
    const int64_t t = ids[k];
    if (t >= 0 && t < vocab) x[t] = neg_inf;
  }
}

template <typename scalar_t>
void rules_row(scalar_t* x, int64_t vocab, const at::TensorAccessor<const int64_t, 1>& tokens, int64_t n,
               const at::TensorAccessor<const int64_t, 1>& cfg, const at::TensorAccessor<const int64_t, 1>& suppress,
               const at::TensorAccessor<const int64_t, 1>& begin_suppress) {
  const bool first = n == 0;
  if (cfg[kSuppressBlank] != 0 && first) suppress_list(x, vocab, begin_suppress);
  suppress_list(x, vocab, suppress);
  if (cfg[kTimestamps] == 0) return;

  const int64_t eot = cfg[kEot], no_ts = cfg[kNoTimestamps];
  const int64_t ts = std::clamp<int64_t>(cfg[kTimestampBegin], 0, vocab);
  const int64_t max_initial = cfg[kMaxInitialTimestamp];
  if (no_ts >= 0 && no_ts < vocab) x[no_ts] = static_cast<scalar_t>(-std::numeric_limits<float>::infinity());
  const int64_t begin = cfg[kTimestampBegin];
  const bool last_ts = n >= 1 && tokens[n - 1] >= begin;
  const bool penult_ts = n < 2 || tokens[n - 2] >= begin;
  if (last_ts) {
    if (penult_ts) {
      fill_neg_inf(x, ts, vocab);  // a pair just closed: text (or end) next
    } else {
      fill_neg_inf(x, 0, std::min(eot, vocab));  // an opening timestamp: a timestamp (or end) next
    }
  }
  int64_t last_stamp = -1;
  for (int64_t i = n - 1; i >= 0; --i) {
    if (tokens[i] >= begin) {
      last_stamp = tokens[i];
      break;
    }
  }
  if (last_stamp >= 0) {  // timestamps never decrease; after a closed pair they strictly increase
    const int64_t floor = last_ts && !penult_ts ? last_stamp : last_stamp + 1;
    fill_neg_inf(x, ts, std::min(floor, vocab));
  }
  if (first) {
    fill_neg_inf(x, 0, ts);
    if (max_initial >= 0) fill_neg_inf(x, std::min(begin + max_initial + 1, vocab), vocab);
  }

  // The logsumexp rule: log P(any timestamp) > max log P(text token) forces a timestamp. Both sides of the
  // reference's comparison carry the same -logsumexp(all) term, so it is compared on the logits directly.
  float max_text = -std::numeric_limits<float>::infinity();
  for (int64_t c = 0; c < ts; ++c) max_text = std::max(max_text, static_cast<float>(x[c]));
  float max_ts = -std::numeric_limits<float>::infinity();
  for (int64_t c = ts; c < vocab; ++c) max_ts = std::max(max_ts, static_cast<float>(x[c]));
  if (max_ts == -std::numeric_limits<float>::infinity()) return;  // no timestamp allowed: nothing to force
  double sum = 0.0;
  for (int64_t c = ts; c < vocab; ++c) sum += std::exp(static_cast<double>(static_cast<float>(x[c]) - max_ts));
  const double ts_logsumexp = static_cast<double>(max_ts) + std::log(sum);
  if (ts_logsumexp > static_cast<double>(max_text)) fill_neg_inf(x, 0, ts);
}

}  // namespace

void apply_whisper_logits_rules_cpu(at::Tensor& logits, const at::Tensor& output_tokens,
                                    const at::Tensor& output_lens, const at::Tensor& row_config,
                                    const at::Tensor& suppress_tokens, const at::Tensor& begin_suppress_tokens) {
  check_whisper_logits_rules(logits, output_tokens, output_lens, row_config, suppress_tokens, begin_suppress_tokens);
  const int64_t batch = logits.size(0), vocab = logits.size(1);
  if (batch == 0 || vocab == 0) return;
  const auto lens = output_lens.accessor<const int64_t, 1>();
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(lens[b] >= 0 && lens[b] <= output_tokens.size(1), "apply_whisper_logits_rules: output_lens[", b,
                "] = ", lens[b], " is outside [0, ", output_tokens.size(1), "]");
  }
  const auto tokens = output_tokens.accessor<const int64_t, 2>();
  const auto cfg = row_config.accessor<const int64_t, 2>();
  const auto suppress = suppress_tokens.accessor<const int64_t, 2>();
  const auto begin_suppress = begin_suppress_tokens.accessor<const int64_t, 2>();
  const int64_t row_stride = logits.stride(0);
  VW_DISPATCH_FLOATING(logits.scalar_type(), scalar_t, "apply_whisper_logits_rules", [&] {
    scalar_t* data = logits.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        rules_row(data + b * row_stride, vocab, tokens[b], lens[b], cfg[b], suppress[b], begin_suppress[b]);
      }
    });
  });
}

}  // namespace vllm_whisper
