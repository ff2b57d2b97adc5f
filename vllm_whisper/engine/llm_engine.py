"""The synchronous engine: add window requests, call step() until they finish.

Each step encodes newly admitted windows in one batch (their cross K/V written once into slots), feeds every
running sequence one token (new ones their whole prompt) through the paged decoder, applies Whisper's rules and
samples. Finished or aborted requests return their blocks and slots at once. Alignment requests (word
timestamps) run in the same step as one batched teacher-forced pass over their windows' slots.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vllm_whisper import _custom_ops as ops
from vllm_whisper.attention.selector import get_attention_backend
from vllm_whisper.config import EngineConfig
from vllm_whisper.engine.alignment import AlignmentParams, AlignmentRequest
from vllm_whisper.engine.kv_cache import BlockPool, KVCacheTensors, SlotPool, allocate_tensors, plan_pools
from vllm_whisper.engine.model_runner import ModelRunner
from vllm_whisper.engine.beam_search import beam_update, finalize
from vllm_whisper.engine.request import Request, RequestOutput, RequestStatus, Sequence
from vllm_whisper.engine.sampler import SamplingParams, sample
from vllm_whisper.engine.scheduler import Scheduler, blocks_for
from vllm_whisper.engine.windows import WindowRegistry
from vllm_whisper.model_executor.loader import LoadedModel

if TYPE_CHECKING:
    from vllm_whisper.engine.cuda_graphs import DecodeGraphs


@dataclass
class EngineStats:
    """Counters and gauges; "exactly once" claims about the encoder are tested against these."""

    encoder_runs: int
    cross_kv_projections: int
    generated_tokens: int
    preemptions: int
    num_running: int
    num_waiting: int
    kv_usage: float  # fraction of self-attention blocks in use
    cross_slot_usage: float
    audio_seconds_processed: float
    num_kv_blocks: int
    num_free_kv_blocks: int
    num_cross_slots: int
    num_free_cross_slots: int
    steps: int
    alignment_passes: int = 0  # windows aligned for word timestamps (none re-encoded: they read the slot)


class LLMEngine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None):
        self.loaded = loaded
        self.config = config or EngineConfig()
        model = loaded.model
        num_blocks, num_slots = self._pool_sizes()
        self.block_pool = BlockPool(num_blocks)
        self.slot_pool = SlotPool(num_slots)
        cache = allocate_tensors(loaded.config, num_blocks, num_slots, self.config.block_size, model.dtype,
                                 model.device)
        backend = get_attention_backend(self.config.attention_backend, model.device, loaded.config.head_dim)
        self.runner = ModelRunner(model, cache, loaded.tokenizer.special.no_speech, backend,
                                  self._capture_decode_graphs(cache, backend.name))
        self.windows = WindowRegistry(self.slot_pool)
        self.scheduler = Scheduler(self.config, self.block_pool, self.slot_pool,
                                   self.config.encoder_windows_per_step(model.device.type))
        self.requests: dict[str, Request] = {}
        self.alignment_requests: dict[str, AlignmentRequest] = {}
        self.generated_tokens = 0
        self.audio_seconds_processed = 0.0
        self.steps = 0

    # --- memory -----------------------------------------------------------------------------------
    def _pool_sizes(self) -> tuple[int, int]:
        cfg, model = self.config, self.loaded.model
        if cfg.num_kv_blocks is not None and cfg.num_cross_slots is not None:
            return cfg.num_kv_blocks, cfg.num_cross_slots
        if model.device.type == "cuda":
            budget = self._gpu_budget_bytes()
        else:
            budget = int(cfg.kv_cache_space_gib * 2**30)
        blocks, slots = plan_pools(self.loaded.config, budget, cfg.block_size, cfg.max_num_seqs, model.dtype)
        return cfg.num_kv_blocks or blocks, cfg.num_cross_slots or slots

    def _gpu_budget_bytes(self) -> int:
        """Memory left for the caches under --gpu-memory-utilization after a profiling pass of the encoder."""
        model = self.loaded.model
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            windows = self.config.encoder_windows_per_step("cuda")
            probe = torch.zeros(windows, self.loaded.config.num_mel_bins, 3000, device=model.device)
            model.compute_cross_kv(model.encode(probe))
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        _, total = torch.cuda.mem_get_info()
        budget = int(total * self.config.gpu_memory_utilization) - peak
        torch.cuda.empty_cache()
        if budget <= 0:
            raise ValueError(
                f"The model needs {peak / 2**30:.1f} GiB of the GPU's {total / 2**30:.1f} GiB at "
                f"--gpu-memory-utilization {self.config.gpu_memory_utilization}; nothing is left for the KV cache."
            )
        return budget

    def _capture_decode_graphs(self, cache: KVCacheTensors, backend: str) -> "DecodeGraphs | None":
        """CUDA graphs for decode steps on CUDA with the Triton backend, unless enforce_eager."""
        if self.config.enforce_eager or backend != "triton" or self.loaded.model.device.type != "cuda":
            return None
        from vllm_whisper.engine.cuda_graphs import DecodeGraphs, capture_batch_sizes

        return DecodeGraphs(self.loaded.model, cache, capture_batch_sizes(self.config.max_num_seqs), capture=True)

    # --- requests ---------------------------------------------------------------------------------
    def add_request(self, request_id: str, features: Tensor, prompt: list[int], params: SamplingParams,
                    audio_seconds: float = 30.0, window_key: str | None = None, retain_window: bool = False) -> None:
        """Queue one window for decoding; features are (n_mels, 3000) log-mel frames.

        Requests with the same window_key share one encoder run and cross-attention slot. With retain_window the
        slot outlives the request until release_window(window_key), so later requests skip the encoder too.
        """
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        expected = (self.loaded.config.num_mel_bins, 3000)
        if tuple(features.shape) != expected:
            raise ValueError(f"features must have shape {expected}, got {tuple(features.shape)}")
        room = self.loaded.config.max_target_positions - len(prompt)
        if not prompt or room <= 0:
            raise ValueError(f"the prompt must hold 1 to {self.loaded.config.max_target_positions - 1} tokens")
        max_tokens = min(params.max_new_tokens, room)
        blocks_per_seq = blocks_for(len(prompt) + max_tokens, self.config.block_size)
        if blocks_per_seq * params.beam_size > self.block_pool.num_blocks:
            raise ValueError("the KV cache is too small for one full-length request; raise the cache budget")
        generator = None
        if params.temperature > 0:
            generator = torch.Generator(device=self.loaded.model.device)
            generator.manual_seed(params.seed if params.seed is not None else torch.seed())
        request = Request(request_id, features, list(prompt), params, max_tokens, audio_seconds,
                          generator=generator)
        request.window = self.windows.attach(window_key or f"request:{request_id}", retain_window)
        self.requests[request_id] = request
        self.scheduler.add(request)

    def abort_request(self, request_id: str) -> bool:
        """Stop a request and free its blocks and slot; False when it is unknown or already finished."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return self._abort_alignment(request_id)
        self._finish(request, RequestStatus.FINISHED_ABORTED)
        return True

    def release_window(self, window_key: str) -> bool:
        """Drop a retained window; its slot is freed once no request decodes it."""
        return self.windows.release(window_key)

    def _finish(self, request: Request, status: RequestStatus) -> None:
        self.scheduler.finish(request, status)
        self.windows.detach(request.window)
        self.requests.pop(request.request_id, None)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests or self.alignment_requests)

    # --- alignment requests -----------------------------------------------------------------------
    def add_alignment_request(self, request_id: str, features: Tensor, prompt: list[int], params: AlignmentParams,
                              window_key: str | None = None, retain_window: bool = False) -> None:
        """Queue a word-alignment pass over a window's text: prompt (<|startoftranscript|> .. <|notimestamps|>)
        + params.text_tokens + <|endoftext|>, teacher-forced. Its one output carries the AlignmentOutput.

        A window that already has a slot (retained, or decoding) is read from it; otherwise `features` are
        encoded in the step like a decode request's. window_key and retain_window are as in add_request.
        """
        if request_id in self.requests or request_id in self.alignment_requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        expected = (self.loaded.config.num_mel_bins, 3000)
        if tuple(features.shape) != expected:
            raise ValueError(f"features must have shape {expected}, got {tuple(features.shape)}")
        eot = self.loaded.tokenizer.eot
        params.validate(eot)
        if not params.text_tokens:
            raise ValueError("an alignment request needs at least one text token")
        request = AlignmentRequest(request_id, features, list(prompt), params, eot)
        limit = self.loaded.config.max_target_positions
        if not prompt or len(request.tokens) > limit:
            raise ValueError(f"{len(params.text_tokens)} text tokens plus the prompt exceed the decoder's "
                             f"{limit} positions")
        request.window = self.windows.attach(window_key or f"request:{request_id}", retain_window)
        self.alignment_requests[request_id] = request
        self.scheduler.add_alignment(request)

    def _abort_alignment(self, request_id: str) -> bool:
        request = self.alignment_requests.pop(request_id, None)
        if request is None:
            return False
        self.scheduler.finish_alignment(request)
        self.windows.detach(request.window)
        return True

    def _run_alignments(self, requests: list[AlignmentRequest]) -> list[RequestOutput]:
        """The step's alignment passes, one forward; each request finishes with its AlignmentOutput."""
        outputs = []
        for request, aligned in zip(requests, self.runner.align(requests)):
            self.alignment_requests.pop(request.request_id, None)
            self.windows.detach(request.window)
            logprob = float(sum(math.log(max(p, 1e-45)) for p in aligned.token_probs))
            outputs.append(RequestOutput(request.request_id, [], [], True, RequestStatus.FINISHED_STOPPED.value,
                                         logprob, math.nan, alignment=aligned))
        return outputs

    # --- the step ---------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        plan = self.scheduler.schedule()
        if plan.is_empty:
            if self.scheduler.waiting and not self.scheduler.running:
                raise RuntimeError("no waiting request fits the KV cache; raise the cache budget")
            return []
        self.steps += 1
        if plan.encode:
            self.runner.encode(plan.encode)
        self.runner.copy_blocks(plan.block_copies)
        outputs: list[RequestOutput] = []
        for group in (plan.prefill, plan.decode):
            if group:
                outputs += self._run_group(group)
        if plan.align:
            outputs += self._run_alignments(plan.align)
        return outputs

    def _run_group(self, seqs: list[Sequence]) -> list[RequestOutput]:
        step = self.runner.run(seqs)
        # Whisper's rules for every row at once (the vllm_whisper._C op when built, else sampler.apply_rules).
        ruled = ops.apply_whisper_logits_rules(step.logits, [s.request.params.rules for s in seqs],
                                               [s.output for s in seqs])
        now = time.monotonic()
        beam_rows: dict[str, list[int]] = {}
        plain_rows: list[int] = []
        for row, (seq, no_speech) in enumerate(zip(seqs, step.no_speech_probs)):
            request = seq.request
            if no_speech is not None and math.isnan(request.no_speech_prob):
                request.no_speech_prob = no_speech
            if request.first_token_time is None:
                request.first_token_time = now
            if request.is_beam_search:
                beam_rows.setdefault(request.request_id, []).append(row)
            else:
                plain_rows.append(row)
        outputs: list[RequestOutput] = []
        if plain_rows:
            plain = [seqs[i] for i in plain_rows]
            sampled = sample(ruled[plain_rows], [s.request.params for s in plain], [s.request.generator for s in plain])
            for seq, token, logprob in zip(plain, sampled.tokens, sampled.logprobs):
                outputs.append(self._advance(seq, token, logprob))
        for rows in beam_rows.values():
            request = seqs[rows[0]].request
            outputs += self._beam_step(request, torch.log_softmax(ruled[rows].float(), dim=-1))
        return outputs

    def _advance(self, seq: Sequence, token: int, logprob: float) -> RequestOutput:
        """Append a sampled token to a single-sequence request, finishing it on end-of-text or the limit."""
        request = seq.request
        seq.sum_logprob += logprob
        new_tokens: list[int] = []
        status = None
        if token == request.params.rules.eot:
            status = RequestStatus.FINISHED_STOPPED
        else:
            seq.output.append(token)
            new_tokens.append(token)
            self.generated_tokens += 1
            if len(seq.output) >= request.max_tokens:
                status = RequestStatus.FINISHED_LENGTH
        if status is not None:
            self._finish(request, status)
            self.audio_seconds_processed += request.audio_seconds
        return RequestOutput(request.request_id, list(seq.output), new_tokens, status is not None,
                             status.value if status is not None else None, seq.sum_logprob, request.no_speech_prob)

    def _beam_step(self, request: Request, logprobs: Tensor) -> list[RequestOutput]:
        """Rank the beams' candidates, fork the survivors (sharing blocks), and finish when the search is done."""
        choices, full = beam_update(request, logprobs)
        new_seqs = []
        for choice in choices:
            source = request.seqs[choice.source]
            shared = [self.block_pool.share(block) for block in source.block_table]
            new_seqs.append(Sequence(request, source.output + [choice.token], choice.score, shared,
                                     source.num_computed))
        for old in request.seqs:
            self.scheduler.free_blocks(old)
        request.seqs = new_seqs
        self.generated_tokens += len(new_seqs)
        if not full and request.beam_steps < request.max_tokens:
            return []
        tokens, score = finalize(request)
        status = RequestStatus.FINISHED_STOPPED if full else RequestStatus.FINISHED_LENGTH
        self._finish(request, status)
        self.audio_seconds_processed += request.audio_seconds
        return [RequestOutput(request.request_id, tokens, tokens, True, status.value, score, request.no_speech_prob)]

    # --- observability ----------------------------------------------------------------------------
    @property
    def stats(self) -> EngineStats:
        blocks, slots = self.block_pool, self.slot_pool
        counters = self.runner.counters
        return EngineStats(
            encoder_runs=counters.encoder_runs,
            cross_kv_projections=counters.cross_kv_projections,
            generated_tokens=self.generated_tokens,
            preemptions=self.scheduler.num_preemptions,
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_usage=1.0 - blocks.num_free / blocks.num_blocks,
            cross_slot_usage=1.0 - slots.num_free / slots.num_slots,
            audio_seconds_processed=self.audio_seconds_processed,
            num_kv_blocks=blocks.num_blocks,
            num_free_kv_blocks=blocks.num_free,
            num_cross_slots=slots.num_slots,
            num_free_cross_slots=slots.num_free,
            steps=self.steps,
            alignment_passes=counters.alignment_passes,
        )
