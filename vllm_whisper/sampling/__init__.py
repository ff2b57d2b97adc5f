"""Whisper's logits rules, once per tier (the engine, _custom_ops and the tests import them from here).

  rules.py      LogitsRules: the constants the rules need for one vocabulary and one request
  reference.py  the rules for one row, exactly as openai-whisper applies them: the test oracle
  packed.py     LogitsRulesBatch / pack_logits_rules: a batch's rules and histories as tensors (the ops' inputs)
  batched.py    the rules for a whole (batch, vocab) tensor in torch, no host sync: the fallback of the C++/CUDA
                op `apply_whisper_logits_rules` (csrc/cpu/logits_ops.cpp, csrc/cuda/logits_kernels.cu)
"""

from vllm_whisper.sampling.rules import LogitsRules

__all__ = ["LogitsRules"]
