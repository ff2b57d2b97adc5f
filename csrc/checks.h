// Argument checks shared by the CPU and CUDA implementations, so both reject the same inputs with the same
// messages. Header-only: included by cpu/*.cpp and cuda/*.cu.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace vllm_whisper {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::ScalarType::Float || t == at::ScalarType::Half || t == at::ScalarType::BFloat16;
}

inline void check_same_device(const char* op, const at::Tensor& ref, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but the cache is on ",
              ref.device());
}

// What every cache write needs: contiguous caches of one supported float dtype, matching key/value dtypes, and
// everything on the cache's device.
inline void check_cache_write(const char* op, const at::Tensor& key, const at::Tensor& value,
                              const at::Tensor& key_cache, const at::Tensor& value_cache, const at::Tensor& index,
                              const char* index_name) {
  TORCH_CHECK(key_cache.is_contiguous() && value_cache.is_contiguous(), op, ": the caches must be contiguous");
  TORCH_CHECK(key_cache.scalar_type() == value_cache.scalar_type(), op, ": key_cache and value_cache dtypes differ");
  TORCH_CHECK(key.scalar_type() == value.scalar_type(), op, ": key and value dtypes differ");
  TORCH_CHECK(is_supported_float(key.scalar_type()) && is_supported_float(key_cache.scalar_type()), op,
              ": dtypes must be float32, float16 or bfloat16, got key ", key.scalar_type(), " and cache ",
              key_cache.scalar_type());
  check_same_device(op, key_cache, key, "key");
  check_same_device(op, key_cache, value, "value");
  check_same_device(op, key_cache, value_cache, "value_cache");
  check_same_device(op, key_cache, index, index_name);
}

// key/value: (num_tokens, heads, head_dim); caches: (num_blocks, block_size, heads, head_dim), contiguous;
// slot_mapping: (num_tokens,) int64, flat slot = block * block_size + offset, negative = skip.
inline void check_reshape_and_cache(const at::Tensor& key, const at::Tensor& value, const at::Tensor& key_cache,
                                    const at::Tensor& value_cache, const at::Tensor& slot_mapping) {
  constexpr const char* op = "reshape_and_cache";
  TORCH_CHECK(key.dim() == 3, op, ": key must be (num_tokens, heads, head_dim), got ", key.sizes());
  TORCH_CHECK(value.sizes() == key.sizes(), op, ": value ", value.sizes(), " must match key ", key.sizes());
  TORCH_CHECK(key_cache.dim() == 4, op, ": key_cache must be (num_blocks, block_size, heads, head_dim), got ",
              key_cache.sizes());
  TORCH_CHECK(value_cache.sizes() == key_cache.sizes(), op, ": value_cache ", value_cache.sizes(),
              " must match key_cache ", key_cache.sizes());
  TORCH_CHECK(key_cache.size(2) == key.size(1) && key_cache.size(3) == key.size(2), op, ": key ", key.sizes(),
              " does not fit key_cache ", key_cache.sizes(), " (heads and head_dim must match)");
  TORCH_CHECK(slot_mapping.dim() == 1 && slot_mapping.size(0) == key.size(0), op,
              ": slot_mapping must be (num_tokens,) = (", key.size(0), ",), got ", slot_mapping.sizes());
  TORCH_CHECK(slot_mapping.scalar_type() == at::ScalarType::Long, op, ": slot_mapping must be int64, got ",
              slot_mapping.scalar_type());
  check_cache_write(op, key, value, key_cache, value_cache, slot_mapping, "slot_mapping");
}

// key/value: (batch, heads, frames, head_dim); caches: (num_slots, heads, frames, head_dim), contiguous;
// slots: (batch,) int64, negative = skip.
inline void check_reshape_and_cache_cross(const at::Tensor& key, const at::Tensor& value,
                                          const at::Tensor& key_cache, const at::Tensor& value_cache,
                                          const at::Tensor& slots) {
  constexpr const char* op = "reshape_and_cache_cross";
  TORCH_CHECK(key.dim() == 4, op, ": key must be (batch, heads, frames, head_dim), got ", key.sizes());
  TORCH_CHECK(value.sizes() == key.sizes(), op, ": value ", value.sizes(), " must match key ", key.sizes());
  TORCH_CHECK(key_cache.dim() == 4, op, ": key_cache must be (num_slots, heads, frames, head_dim), got ",
              key_cache.sizes());
  TORCH_CHECK(value_cache.sizes() == key_cache.sizes(), op, ": value_cache ", value_cache.sizes(),
              " must match key_cache ", key_cache.sizes());
  TORCH_CHECK(key.sizes().slice(1) == key_cache.sizes().slice(1), op, ": key ", key.sizes(),
              " does not fit key_cache ", key_cache.sizes(), " (heads, frames and head_dim must match)");
  TORCH_CHECK(slots.dim() == 1 && slots.size(0) == key.size(0), op, ": slots must be (batch,) = (", key.size(0),
              ",), got ", slots.sizes());
  TORCH_CHECK(slots.scalar_type() == at::ScalarType::Long, op, ": slots must be int64, got ", slots.scalar_type());
  check_cache_write(op, key, value, key_cache, value_cache, slots, "slots");
}

// Column layout of row_config, one row per logits row.
enum RowConfig : int64_t {
  kEot = 0,
  kNoTimestamps = 1,
  kTimestampBegin = 2,
  kTimestamps = 3,           // 0/1: apply the timestamp rules
  kSuppressBlank = 4,        // 0/1: suppress begin_suppress_tokens on the first sampled token
  kMaxInitialTimestamp = 5,  // index above timestamp_begin, negative = no limit
  kRowConfigColumns = 6,
};

// logits: (batch, vocab) float32/16/bf16 with unit stride on vocab, changed in place.
// output_tokens: (batch, max_len) int64, the tokens sampled so far (prompt excluded), only the first
//   output_lens[b] of row b are read. output_lens: (batch,) int64. row_config: (batch, 6) int64 (RowConfig).
// suppress_tokens / begin_suppress_tokens: (batch, k) int64, ids outside [0, vocab) (e.g. -1 padding) ignored.
inline void check_whisper_logits_rules(const at::Tensor& logits, const at::Tensor& output_tokens,
                                       const at::Tensor& output_lens, const at::Tensor& row_config,
                                       const at::Tensor& suppress_tokens,
                                       const at::Tensor& begin_suppress_tokens) {
  constexpr const char* op = "apply_whisper_logits_rules";
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be (batch, vocab), got ", logits.sizes());
  TORCH_CHECK(logits.size(1) == 0 || logits.stride(1) == 1, op, ": logits must have unit stride along the vocab");
  TORCH_CHECK(is_supported_float(logits.scalar_type()), op, ": logits must be float32, float16 or bfloat16, got ",
              logits.scalar_type());
  const int64_t batch = logits.size(0);
  auto check_long_2d = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == batch, op, ": ", name, " must be (", batch, ", n), got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == at::ScalarType::Long, op, ": ", name, " must be int64, got ", t.scalar_type());
    TORCH_CHECK(t.device() == logits.device(), op, ": ", name, " is on ", t.device(), " but logits are on ",
                logits.device());
  };
  check_long_2d(output_tokens, "output_tokens");
  check_long_2d(row_config, "row_config");
  check_long_2d(suppress_tokens, "suppress_tokens");
  check_long_2d(begin_suppress_tokens, "begin_suppress_tokens");
  TORCH_CHECK(row_config.size(1) == kRowConfigColumns, op, ": row_config must have ", int64_t(kRowConfigColumns),
              " columns (eot, no_timestamps, timestamp_begin, timestamps, suppress_blank, "
              "max_initial_timestamp_index), got ", row_config.size(1));
  TORCH_CHECK(output_lens.dim() == 1 && output_lens.size(0) == batch, op, ": output_lens must be (", batch,
              ",), got ", output_lens.sizes());
  TORCH_CHECK(output_lens.scalar_type() == at::ScalarType::Long, op, ": output_lens must be int64");
  TORCH_CHECK(output_lens.device() == logits.device(), op, ": output_lens is on ", output_lens.device(),
              " but logits are on ", logits.device());
}

}  // namespace vllm_whisper
