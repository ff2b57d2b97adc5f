// CUDA kernels that write new K/V into the caches (layouts: vllm_whisper/attention/kv_cache_layout.py).
// Self-attention: one block per new token, writing heads * head_dim values at its flat slot. Cross-attention: a
// grid over (chunk, head, window) copying the window's 1500 x head_dim values per head into its slot. Source
// strides are honoured (the decoder's K/V are transposed views); the caches are contiguous. Dtypes convert on the
// fly.
#include <algorithm>

#include "../checks.h"
#include "../dispatch.h"
#include "../ops.h"
#include "cuda_utils.h"

namespace vllm_whisper {
namespace {

template <typename dst_t, typename src_t>
__global__ void reshape_and_cache_kernel(const src_t* __restrict__ key, const src_t* __restrict__ value,
                                         dst_t* __restrict__ key_cache, dst_t* __restrict__ value_cache,
                                         const int64_t* __restrict__ slot_mapping, int64_t key_stride0,
                                         int64_t key_stride1, int64_t value_stride0, int64_t value_stride1,
                                         int heads, int dim, int64_t num_slots) {
  const int64_t token = blockIdx.x;
  const int64_t slot = slot_mapping[token];
  if (slot < 0 || slot >= num_slots) return;  // padding (or out of range: the CPU op raises, here we skip)
  const int row = heads * dim;
  dst_t* k_out = key_cache + slot * row;
  dst_t* v_out = value_cache + slot * row;
  const src_t* k_in = key + token * key_stride0;
  const src_t* v_in = value + token * value_stride0;
  for (int i = threadIdx.x; i < row; i += blockDim.x) {
    const int h = i / dim, d = i - h * dim;
    k_out[i] = static_cast<dst_t>(static_cast<float>(k_in[h * key_stride1 + d]));
    v_out[i] = static_cast<dst_t>(static_cast<float>(v_in[h * value_stride1 + d]));
  }
}

template <typename dst_t, typename src_t>
__global__ void reshape_and_cache_cross_kernel(const src_t* __restrict__ key, const src_t* __restrict__ value,
                                               dst_t* __restrict__ key_cache, dst_t* __restrict__ value_cache,
                                               const int64_t* __restrict__ slots, int64_t ks0, int64_t ks1,
                                               int64_t ks2, int64_t vs0, int64_t vs1, int64_t vs2, int heads,
                                               int frames, int dim, int64_t num_slots) {
  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int64_t slot = slots[b];
  if (slot < 0 || slot >= num_slots) return;
  const int64_t per_head = static_cast<int64_t>(frames) * dim;
  dst_t* k_out = key_cache + (slot * heads + h) * per_head;
  dst_t* v_out = value_cache + (slot * heads + h) * per_head;
  const src_t* k_in = key + b * ks0 + h * ks1;
  const src_t* v_in = value + b * vs0 + h * vs1;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per_head;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t f = i / dim, d = i - f * dim;
    k_out[i] = static_cast<dst_t>(static_cast<float>(k_in[f * ks2 + d]));
    v_out[i] = static_cast<dst_t>(static_cast<float>(v_in[f * vs2 + d]));
  }
}

at::Tensor unit_stride_last(const at::Tensor& t) {
  return t.size(-1) <= 1 || t.stride(-1) == 1 ? t : t.contiguous();
}

}  // namespace

void reshape_and_cache_cuda(const at::Tensor& key_in, const at::Tensor& value_in, at::Tensor& key_cache,
                            at::Tensor& value_cache, const at::Tensor& slot_mapping_in) {
  check_reshape_and_cache(key_in, value_in, key_cache, value_cache, slot_mapping_in);
  const int64_t tokens = key_in.size(0);
  if (tokens == 0 || key_cache.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(key_cache.device());
  const at::Tensor key = unit_stride_last(key_in), value = unit_stride_last(value_in);
  const at::Tensor slot_mapping = slot_mapping_in.contiguous();
  const int heads = static_cast<int>(key.size(1)), dim = static_cast<int>(key.size(2));
  const int threads = std::min(512, std::max(32, (heads * dim + 31) / 32 * 32));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  VW_DISPATCH_FLOATING(key.scalar_type(), src_t, "reshape_and_cache", [&] {
    VW_DISPATCH_FLOATING(key_cache.scalar_type(), dst_t, "reshape_and_cache", [&] {
      reshape_and_cache_kernel<dst_t, src_t><<<static_cast<unsigned>(tokens), threads, 0, stream>>>(
          key.const_data_ptr<src_t>(), value.const_data_ptr<src_t>(), key_cache.mutable_data_ptr<dst_t>(),
          value_cache.mutable_data_ptr<dst_t>(), slot_mapping.const_data_ptr<int64_t>(), key.stride(0),
          key.stride(1), value.stride(0), value.stride(1), heads, dim, key_cache.size(0) * key_cache.size(1));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void reshape_and_cache_cross_cuda(const at::Tensor& key_in, const at::Tensor& value_in, at::Tensor& key_cache,
                                  at::Tensor& value_cache, const at::Tensor& slots_in) {
  check_reshape_and_cache_cross(key_in, value_in, key_cache, value_cache, slots_in);
  if (key_in.numel() == 0) return;
  TORCH_CHECK(key_in.size(0) <= 65535 && key_in.size(1) <= 65535,
              "reshape_and_cache_cross: at most 65535 windows and heads per call");
  const c10::cuda::CUDAGuard guard(key_cache.device());
  const at::Tensor key = unit_stride_last(key_in), value = unit_stride_last(value_in);
  const at::Tensor slots = slots_in.contiguous();
  const int heads = static_cast<int>(key.size(1)), frames = static_cast<int>(key.size(2));
  const int dim = static_cast<int>(key.size(3));
  constexpr int kThreads = 256;
  const int64_t per_head = static_cast<int64_t>(frames) * dim;
  const int64_t wanted = (per_head + kThreads * 4 - 1) / (kThreads * 4);  // about 4 values per thread
  const unsigned chunks = static_cast<unsigned>(std::min<int64_t>(wanted, 1024));
  const dim3 grid(std::max(chunks, 1u), static_cast<unsigned>(heads), static_cast<unsigned>(key.size(0)));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  VW_DISPATCH_FLOATING(key.scalar_type(), src_t, "reshape_and_cache_cross", [&] {
    VW_DISPATCH_FLOATING(key_cache.scalar_type(), dst_t, "reshape_and_cache_cross", [&] {
      reshape_and_cache_cross_kernel<dst_t, src_t><<<grid, kThreads, 0, stream>>>(
          key.const_data_ptr<src_t>(), value.const_data_ptr<src_t>(), key_cache.mutable_data_ptr<dst_t>(),
          value_cache.mutable_data_ptr<dst_t>(), slots.const_data_ptr<int64_t>(), key.stride(0), key.stride(1),
          key.stride(2), value.stride(0), value.stride(1), value.stride(2), heads, frames, dim, key_cache.size(0));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace vllm_whisper
