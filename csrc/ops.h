// Declarations of the vllm_whisper ops; schemas live in torch_bindings.cpp, argument checks in checks.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace vllm_whisper {

// Self-attention K/V of new tokens into the paged cache: key_cache.view(-1, heads, head_dim)[slot] = key[i]
// for every i with slot_mapping[i] >= 0, converted to the cache dtype.
void reshape_and_cache_cpu(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                           at::Tensor& value_cache, const at::Tensor& slot_mapping);

// Cross-attention K/V of whole windows into their slots: key_cache[slots[b]] = key[b] for slots[b] >= 0.
void reshape_and_cache_cross_cpu(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                                 at::Tensor& value_cache, const at::Tensor& slots);

// Whisper's logits rules for a batch, in place (see checks.h for the tensor layout).
void apply_whisper_logits_rules_cpu(at::Tensor& logits, const at::Tensor& output_tokens,
                                    const at::Tensor& output_lens, const at::Tensor& row_config,
                                    const at::Tensor& suppress_tokens, const at::Tensor& begin_suppress_tokens);

// --quantization int8 (CPU): each row of a float32 (rows, features) matrix as int8 with one scale per row
// (max |row| / 127, round half to even), and an int32 product back to float32: acc * row_scale * col_scale + bias.
std::tuple<at::Tensor, at::Tensor> quantize_rows_int8_cpu(const at::Tensor& x);
at::Tensor dequantize_int8_rows_cpu(const at::Tensor& acc, const at::Tensor& row_scales, const at::Tensor& col_scales,
                                    const std::optional<at::Tensor>& bias);

// Cross attention of q (batch, heads, tokens, head_dim) float32 over each row's slot of the cross caches
// (num_slots, heads, frames, head_dim; float32 or bfloat16), its first lens[b] frames; float32 out, like q.
at::Tensor cross_attention_cpu(const at::Tensor& q, const at::Tensor& key_cache, const at::Tensor& value_cache,
                               const at::Tensor& slots, const at::Tensor& lens, double scale);

#ifdef VLLM_WHISPER_CUDA
void reshape_and_cache_cuda(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                            at::Tensor& value_cache, const at::Tensor& slot_mapping);
void reshape_and_cache_cross_cuda(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                                  at::Tensor& value_cache, const at::Tensor& slots);
void apply_whisper_logits_rules_cuda(at::Tensor& logits, const at::Tensor& output_tokens,
                                     const at::Tensor& output_lens, const at::Tensor& row_config,
                                     const at::Tensor& suppress_tokens, const at::Tensor& begin_suppress_tokens);
#endif

}  // namespace vllm_whisper
