// CPU kernels that write new K/V into the caches: self-attention tokens into 16-token blocks through a flat
// slot mapping, and whole cross-attention windows (1500 frames) into their slots.
// Layouts: vllm_whisper/attention/kv_cache_layout.py.
#include <ATen/Parallel.h>

#include <cstring>
#include <type_traits>

#include "../checks.h"
#include "../dispatch.h"
#include "../ops.h"

namespace vllm_whisper {
namespace {

template <typename dst_t, typename src_t>
inline void copy_row(dst_t* dst, const src_t* src, int64_t n) {
  if constexpr (std::is_same_v<dst_t, src_t>) {
    std::memcpy(dst, src, n * sizeof(dst_t));
  } else {
    for (int64_t i = 0; i < n; ++i) {
      dst[i] = static_cast<dst_t>(static_cast<float>(src[i]));
    }
  }
}

// The innermost dim must be contiguous; the others may have any stride (views and transposes stay copy-free).
at::Tensor unit_stride_last(const at::Tensor& t) {
  return t.size(-1) <= 1 || t.stride(-1) == 1 ? t : t.contiguous();
}

void check_slots_in_range(const char* op, const int64_t* slots, int64_t n, int64_t limit, const char* what) {
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(slots[i] < limit, op, ": ", what, " ", slots[i], " at index ", i, " is out of range (the cache has ",
                limit, ")");
  }
}

template <typename dst_t, typename src_t>
void write_self_cache(const at::Tensor& src, at::Tensor& cache, const int64_t* slots) {
  const int64_t n = src.size(0), heads = src.size(1), dim = src.size(2);
  const int64_t s0 = src.stride(0), s1 = src.stride(1);
  const src_t* src_data = src.const_data_ptr<src_t>();
  dst_t* cache_data = cache.mutable_data_ptr<dst_t>();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, heads * dim));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t slot = slots[i];
      if (slot < 0) continue;
      dst_t* dst = cache_data + slot * heads * dim;
      const src_t* row = src_data + i * s0;
      if (s1 == dim) {
        copy_row(dst, row, heads * dim);
      } else {
        for (int64_t h = 0; h < heads; ++h) copy_row(dst + h * dim, row + h * s1, dim);
      }
    }
  });
}

template <typename dst_t, typename src_t>
void write_cross_cache(const at::Tensor& src, at::Tensor& cache, const int64_t* slots) {
  const int64_t batch = src.size(0), heads = src.size(1), frames = src.size(2), dim = src.size(3);
  const int64_t s0 = src.stride(0), s1 = src.stride(1), s2 = src.stride(2);
  const src_t* src_data = src.const_data_ptr<src_t>();
  dst_t* cache_data = cache.mutable_data_ptr<dst_t>();
  // One task per (window, head, 64-frame chunk): enough parallelism for a single window.
  constexpr int64_t kChunk = 64;
  const int64_t chunks = (frames + kChunk - 1) / kChunk;
  at::parallel_for(0, batch * heads * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (heads * chunks), h = (task / chunks) % heads, c = task % chunks;
      const int64_t slot = slots[b];
      if (slot < 0) continue;
      const int64_t f0 = c * kChunk, f1 = std::min(frames, f0 + kChunk);
      dst_t* dst = cache_data + ((slot * heads + h) * frames + f0) * dim;
      const src_t* row = src_data + b * s0 + h * s1 + f0 * s2;
      if (s2 == dim) {
        copy_row(dst, row, (f1 - f0) * dim);
      } else {
        for (int64_t f = f0; f < f1; ++f) copy_row(dst + (f - f0) * dim, row + (f - f0) * s2, dim);
      }
    }
  });
}

}  // namespace

void reshape_and_cache_cpu(const at::Tensor& key_in, const at::Tensor& value_in, at::Tensor& key_cache,
                           at::Tensor& value_cache, const at::Tensor& slot_mapping_in) {
  check_reshape_and_cache(key_in, value_in, key_cache, value_cache, slot_mapping_in);
  if (key_in.size(0) == 0) return;
  const at::Tensor key = unit_stride_last(key_in), value = unit_stride_last(value_in);
  const at::Tensor slot_mapping = slot_mapping_in.contiguous();
  const int64_t* slots = slot_mapping.const_data_ptr<int64_t>();
  check_slots_in_range("reshape_and_cache", slots, slot_mapping.numel(), key_cache.size(0) * key_cache.size(1),
                       "slot");
  VW_DISPATCH_FLOATING(key.scalar_type(), src_t, "reshape_and_cache", [&] {
    VW_DISPATCH_FLOATING(key_cache.scalar_type(), dst_t, "reshape_and_cache", [&] {
      write_self_cache<dst_t, src_t>(key, key_cache, slots);
      write_self_cache<dst_t, src_t>(value, value_cache, slots);
    });
  });
}

void reshape_and_cache_cross_cpu(const at::Tensor& key_in, const at::Tensor& value_in, at::Tensor& key_cache,
                                 at::Tensor& value_cache, const at::Tensor& slots_in) {
  check_reshape_and_cache_cross(key_in, value_in, key_cache, value_cache, slots_in);
  if (key_in.numel() == 0) return;
  const at::Tensor key = unit_stride_last(key_in), value = unit_stride_last(value_in);
  const at::Tensor slot_tensor = slots_in.contiguous();
  const int64_t* slots = slot_tensor.const_data_ptr<int64_t>();
  check_slots_in_range("reshape_and_cache_cross", slots, slot_tensor.numel(), key_cache.size(0), "slot");
  VW_DISPATCH_FLOATING(key.scalar_type(), src_t, "reshape_and_cache_cross", [&] {
    VW_DISPATCH_FLOATING(key_cache.scalar_type(), dst_t, "reshape_and_cache_cross", [&] {
      write_cross_cache<dst_t, src_t>(key, key_cache, slots);
      write_cross_cache<dst_t, src_t>(value, value_cache, slots);
    });
  });
}

}  // namespace vllm_whisper
