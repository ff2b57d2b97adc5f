"""vLLM's repetition, frequency and presence penalties on a step's ruled logits, for the rows that ask for them.

Only text tokens (ids below end-of-text) are counted and penalised: Whisper's special and timestamp tokens keep the
logits the timestamp rules gave them. What counts as seen follows vLLM: the prompt's and the output's text tokens
for the repetition penalty (the prompt holds the previous text, the initial prompt and hotwords), the output's alone
for the frequency and presence penalties. The penalties run after Whisper's rules (as vLLM runs its penalties after
its logits processors), so a token the rules forbade stays forbidden.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from vllm_whisper.engine.sampler import SamplingParams


def apply_penalties(logits: Tensor, params: Sequence[SamplingParams], prompts: Sequence[Sequence[int]],
                    outputs: Sequence[Sequence[int]]) -> Tensor:
    """Return logits with each row's penalties applied (float32); the same tensor when no row has any."""
    rows = [i for i, p in enumerate(params) if p.has_penalties]
    if not rows:
        return logits
    vocab, device = logits.shape[-1], logits.device
    counts = torch.zeros(len(rows), vocab, device=device)
    in_prompt = torch.zeros(len(rows), vocab, dtype=torch.bool, device=device)
    for k, row in enumerate(rows):
        eot = params[row].rules.eot
        output_text = [t for t in outputs[row] if t < eot]
        if output_text:
            counts[k] = torch.bincount(torch.tensor(output_text, device=device), minlength=vocab).float()
        prompt_text = [t for t in prompts[row] if t < eot]
        if prompt_text:
            in_prompt[k, torch.tensor(prompt_text, device=device)] = True
    column = lambda name: torch.tensor([getattr(params[r], name) for r in rows], device=device)[:, None]  # noqa: E731
    scores = logits[rows].float()
    repetition = column("repetition_penalty")
    seen = in_prompt | (counts > 0)
    scores = torch.where(seen, torch.where(scores > 0, scores / repetition, scores * repetition), scores)
    scores = scores - column("frequency_penalty") * counts - column("presence_penalty") * (counts > 0).float()
    penalised = logits.float().clone()
    penalised[rows] = scores
    return penalised
