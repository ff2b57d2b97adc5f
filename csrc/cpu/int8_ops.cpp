// CPU kernels around torch._int_mm for --quantization int8 (model_executor/quantization.py): symmetric int8
// quantization of each row of a float32 matrix in one pass, and the rescale of the int32 product back to float32
// (row scale x column scale + bias) in one pass. The torch fallbacks in _custom_ops.py compute the same
// arithmetic in the same order, so both paths give bit-identical results.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>

#include "../ops.h"

namespace vllm_whisper {
namespace {
constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23
}  // namespace

std::tuple<at::Tensor, at::Tensor> quantize_rows_int8_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2, "quantize_rows_int8: x must be 2-D (rows, features), got ", x.dim(), " dims");
  TORCH_CHECK(x.scalar_type() == at::ScalarType::Float, "quantize_rows_int8: x must be float32, got ",
              x.scalar_type());
  const at::Tensor input = x.contiguous();
  const int64_t rows = input.size(0), cols = input.size(1);
  at::Tensor values = at::empty({rows, cols}, input.options().dtype(at::kChar));
  at::Tensor scales = at::empty({rows, 1}, input.options());
  const float* src = input.const_data_ptr<float>();
  int8_t* dst = values.mutable_data_ptr<int8_t>();
  float* scale_out = scales.mutable_data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, cols));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = src + r * cols;
      float amax = 0.0f;
#pragma omp simd reduction(max : amax)
      for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(row[c]));
      const float scale = std::max(amax, 1e-12f) / 127.0f;
      scale_out[r] = scale;
      int8_t* out = dst + r * cols;
      // Round half to even by adding and subtracting 1.5 * 2^23 (exact for |v| <= 127, as nearbyint in the default
      // rounding mode, and vectorisable); the quotient is a true division, as the torch reference's.
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) {
        const float rounded = (row[c] / scale + kRoundMagic) - kRoundMagic;
        out[c] = static_cast<int8_t>(static_cast<int32_t>(rounded));
      }
    }
  });
  return {values, scales};
}

at::Tensor dequantize_int8_rows_cpu(const at::Tensor& acc, const at::Tensor& row_scales, const at::Tensor& col_scales,
                                    const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "dequantize_int8_rows";
  TORCH_CHECK(acc.dim() == 2 && acc.scalar_type() == at::ScalarType::Int, op,
              ": acc must be a 2-D int32 product, got ", acc.scalar_type(), " with ", acc.dim(), " dims");
  const int64_t rows = acc.size(0), cols = acc.size(1);
  TORCH_CHECK(row_scales.scalar_type() == at::ScalarType::Float && row_scales.numel() == rows, op,
              ": row_scales must hold one float32 per row (", rows, ")");
  TORCH_CHECK(col_scales.scalar_type() == at::ScalarType::Float && col_scales.numel() == cols, op,
              ": col_scales must hold one float32 per column (", cols, ")");
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK(bias->scalar_type() == at::ScalarType::Float && bias->numel() == cols, op,
                ": bias must hold one float32 per column (", cols, ")");
  }
  const at::Tensor a = acc.contiguous(), rs = row_scales.contiguous(), cs = col_scales.contiguous();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty({rows, cols}, acc.options().dtype(at::kFloat));
  const int32_t* src = a.const_data_ptr<int32_t>();
  const float* row_s = rs.const_data_ptr<float>();
  const float* col_s = cs.const_data_ptr<float>();
  const float* bias_data = has_bias ? b.const_data_ptr<float>() : nullptr;
  float* dst = out.mutable_data_ptr<float>();
  // Tasks of (row, block of columns): one row of 51864 logits still spreads over the threads, and each inner loop
  // is a plain vectorisable pass.
  constexpr int64_t kBlock = 4096;
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
  at::parallel_for(0, rows * blocks, 4, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / blocks, c0 = (task % blocks) * kBlock, c1 = std::min(cols, c0 + kBlock);
      const int32_t* in = src + r * cols;
      float* out_row = dst + r * cols;
      const float rs = row_s[r];
      if (bias_data != nullptr) {
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) out_row[c] = static_cast<float>(in[c]) * rs * col_s[c] + bias_data[c];
      } else {
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) out_row[c] = static_cast<float>(in[c]) * rs * col_s[c];
      }
    }
  });
  return out;
}

}  // namespace vllm_whisper
