// The vllm_whisper op library: schemas (TORCH_LIBRARY), the CPU kernels always, the CUDA kernels when the
// extension is built with VLLM_WHISPER_CUDA, and a minimal Python module so `import vllm_whisper._C` loads it.
#include <Python.h>

#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(vllm_whisper, m) {
  m.def(
      "reshape_and_cache(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
      "Tensor slot_mapping) -> ()");
  m.def(
      "reshape_and_cache_cross(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
      "Tensor slots) -> ()");
  m.def(
      "apply_whisper_logits_rules(Tensor(a!) logits, Tensor output_tokens, Tensor output_lens, "
      "Tensor row_config, Tensor suppress_tokens, Tensor begin_suppress_tokens) -> ()");
  m.def("quantize_rows_int8(Tensor x) -> (Tensor, Tensor)");
  m.def("dequantize_int8_rows(Tensor acc, Tensor row_scales, Tensor col_scales, Tensor? bias) -> Tensor");
  m.def(
      "cross_attention(Tensor q, Tensor key_cache, Tensor value_cache, Tensor slots, Tensor lens, float scale) -> "
      "Tensor");
}

TORCH_LIBRARY_IMPL(vllm_whisper, CPU, m) {
  m.impl("reshape_and_cache", &vllm_whisper::reshape_and_cache_cpu);
  m.impl("reshape_and_cache_cross", &vllm_whisper::reshape_and_cache_cross_cpu);
  m.impl("apply_whisper_logits_rules", &vllm_whisper::apply_whisper_logits_rules_cpu);
  m.impl("quantize_rows_int8", &vllm_whisper::quantize_rows_int8_cpu);
  m.impl("dequantize_int8_rows", &vllm_whisper::dequantize_int8_rows_cpu);
  m.impl("cross_attention", &vllm_whisper::cross_attention_cpu);
}

#ifdef VLLM_WHISPER_CUDA
TORCH_LIBRARY_IMPL(vllm_whisper, CUDA, m) {
  m.impl("reshape_and_cache", &vllm_whisper::reshape_and_cache_cuda);
  m.impl("reshape_and_cache_cross", &vllm_whisper::reshape_and_cache_cross_cuda);
  m.impl("apply_whisper_logits_rules", &vllm_whisper::apply_whisper_logits_rules_cuda);
}
#define VLLM_WHISPER_HAS_CUDA 1
#else
#define VLLM_WHISPER_HAS_CUDA 0
#endif

// No Python functions: the ops are reached through torch.ops.vllm_whisper once the library is loaded.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "vllm_whisper custom ops (torch.ops.vllm_whisper)",
                                      -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m != nullptr && PyModule_AddIntConstant(m, "CUDA_KERNELS", VLLM_WHISPER_HAS_CUDA) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
