// Dtype dispatch shared by the CPU and CUDA sources: the three floating types the caches and logits use.
// A local macro instead of AT_DISPATCH_* so two dispatches nest (source dtype x cache dtype) without shadowing.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#define VW_DISPATCH_CASE(ENUM, CTYPE, ALIAS, ...) \
  case ENUM: {                                    \
    using ALIAS = CTYPE;                          \
    __VA_ARGS__();                                \
    break;                                        \
  }

// Runs the lambda in __VA_ARGS__ with ALIAS bound to float, c10::Half or c10::BFloat16.
#define VW_DISPATCH_FLOATING(DTYPE, ALIAS, NAME, ...)                               \
  [&] {                                                                            \
    switch (DTYPE) {                                                               \
      VW_DISPATCH_CASE(at::ScalarType::Float, float, ALIAS, __VA_ARGS__)           \
      VW_DISPATCH_CASE(at::ScalarType::Half, c10::Half, ALIAS, __VA_ARGS__)        \
      VW_DISPATCH_CASE(at::ScalarType::BFloat16, c10::BFloat16, ALIAS, __VA_ARGS__) \
      default:                                                                     \
        TORCH_CHECK(false, NAME, ": unsupported dtype ", DTYPE,                    \
                    " (expected float32, float16 or bfloat16)");                   \
    }                                                                              \
  }()
