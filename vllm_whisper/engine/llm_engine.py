"""The synchronous engine: add window requests, call step() until they finish.

Each step encodes newly admitted windows in one batch (their cross K/V written once into slots), feeds every
running sequence one token (new ones their whole prompt) through the paged decoder, applies Whisper's rules and
samples. Finished or aborted requests return their blocks and slots at once. Alignment requests (word
timestamps) run in the same step as one batched teacher-forced pass over their windows' slots.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from vllm_whisper import _custom_ops as ops
from vllm_whisper.attention.kv_cache_layout import KVCacheTensors, allocate_tensors
from vllm_whisper.attention.selector import get_attention_backend
from vllm_whisper.config import EngineConfig
from vllm_whisper.engine.alignment import AlignmentParams, AlignmentRequest
from vllm_whisper.engine.audio_context import cap_timestamps, last_timestamp_index
from vllm_whisper.engine.cache_dtype import resolve_kv_cache_dtype
from vllm_whisper.engine.kv_cache import BlockPool, SlotPool, plan_pools
from vllm_whisper.engine.penalties import apply_penalties
from vllm_whisper.engine.model_runner import ModelRunner
from vllm_whisper.engine.beam_search import beam_update, finalize
from vllm_whisper.engine.chunked_encoder import ChunkedEncoder
from vllm_whisper.engine.cpu_allocator import tune_cpu_allocator
from vllm_whisper.engine.iteration_stats import IterationStats
from vllm_whisper.engine.request import Request, RequestOutput, RequestStatus, Sequence
from vllm_whisper.engine.sampler import SamplerOutput, SamplingParams, sample
from vllm_whisper.engine.scheduler import Scheduler, blocks_for
from vllm_whisper.engine.windows import WindowRegistry
from vllm_whisper.model_executor.loader import LoadedModel

if TYPE_CHECKING:
    from vllm_whisper.engine.cuda_graphs import DecodeGraphs

logger = logging.getLogger(__name__)


@dataclass
class _GroupDecision:
    """What a group's model pass decided, before any of it is applied to the requests."""

    no_speech_probs: list[float | None]
    failed: set[str]  # requests whose logits were not finite
    plain_rows: list[int]
    sampled: SamplerOutput | None  # the sampler's choices for plain_rows
    beams: dict[str, Tensor]  # per beam-search request, log-probabilities of its rows


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
    failed_requests: int = 0  # requests the engine finished with an error (fault containment)
    alignment_passes: int = 0  # windows aligned for word timestamps (none re-encoded: they read the slot)
    prompt_tokens: int = 0  # decoder prompt tokens of admitted windows (each window once, not its recomputes)


class LLMEngine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None):
        self.loaded = loaded
        self.config = config or EngineConfig()
        model = loaded.model
        if model.device.type == "cpu":
            tune_cpu_allocator()
        backend = get_attention_backend(self.config.attention_backend, model.device, loaded.config.head_dim)
        self.cross_cache_dtype = resolve_kv_cache_dtype(self.config.kv_cache_dtype, model.dtype, model.device,
                                                        backend.name)
        num_blocks, num_slots = self._pool_sizes()
        self.block_pool = BlockPool(num_blocks)
        self.slot_pool = SlotPool(num_slots)
        cache = allocate_tensors(loaded.config, num_blocks, num_slots, self.config.block_size, model.dtype,
                                 model.device, cross_dtype=self.cross_cache_dtype)
        self.runner = ModelRunner(model, cache, loaded.tokenizer.special.no_speech, backend,
                                  self._capture_decode_graphs(cache, backend.name), self.config.audio_context)
        self.windows = WindowRegistry(self.slot_pool)
        layers_per_step = self.config.encoder_layers_per_step
        self.chunked_encoder = (ChunkedEncoder(loaded.config.encoder_layers, layers_per_step)
                                if layers_per_step is not None else None)
        self.scheduler = Scheduler(self.config, self.block_pool, self.slot_pool,
                                   self.config.encoder_windows_per_step(model.device.type),
                                   encode_in_step=self.chunked_encoder is None)
        self.requests: dict[str, Request] = {}
        self.failed_requests = 0
        self.alignment_requests: dict[str, AlignmentRequest] = {}
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.audio_seconds_processed = 0.0
        self.steps = 0
        self._timings: IterationStats | None = None  # recorded only once a consumer takes them
        self._taken_counters = (0, 0, 0)  # prompt tokens, generated tokens, preemptions at the last take

    # --- memory -----------------------------------------------------------------------------------
    def _pool_sizes(self) -> tuple[int, int]:
        cfg, model = self.config, self.loaded.model
        if cfg.num_kv_blocks is not None and cfg.num_cross_slots is not None:
            return cfg.num_kv_blocks, cfg.num_cross_slots
        if model.device.type == "cuda":
            budget = self._gpu_budget_bytes()
        else:
            budget = int(cfg.kv_cache_space_gib * 2**30)
        blocks, slots = plan_pools(self.loaded.config, budget, cfg.block_size, cfg.max_num_seqs, model.dtype,
                                   self.cross_cache_dtype)
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
                    audio_seconds: float = 30.0, window_key: str | None = None, retain_window: bool = False,
                    priority: int = 0, urgent_after: float | None = None, full_audio_context: bool = False) -> None:
        """Queue one window for decoding; features are (n_mels, 3000) log-mel frames.

        Requests with the same window_key share one encoder run and cross-attention slot. With retain_window the
        slot outlives the request until release_window(window_key), so later requests skip the encoder too. A
        request of priority > 0 with urgent_after counts as priority 0 that many seconds after it was added. With
        full_audio_context the window is encoded over all its frames whatever `--audio-context` says (a window whose
        words will be aligned).
        """
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        if urgent_after is not None and urgent_after < 0:
            raise ValueError(f"urgent_after must be at least 0 seconds, got {urgent_after}")
        expected = (self.loaded.config.num_mel_bins, 3000)
        if tuple(features.shape) != expected:
            raise ValueError(f"features must have shape {expected}, got {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise ValueError("features contain NaN or infinite values; the audio cannot be analysed")
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
                          generator=generator, priority=priority, urgent_after=urgent_after,
                          full_audio_context=full_audio_context)
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

    @property
    def is_stalled(self) -> bool:
        """Requests (or alignment passes) wait but none runs: the next step does nothing until a caller releases a
        retained window (release_window) whose cross-attention slot they need."""
        if self.chunked_encoder is not None and (self.chunked_encoder.busy or self._windows_to_encode()):
            return False
        return bool(self.scheduler.waiting or self.scheduler.alignments) and not self.scheduler.running

    # --- the step ---------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        outputs: list[RequestOutput] = []
        if self.chunked_encoder is not None:
            outputs += self._advance_encoder()
        plan = self.scheduler.schedule()
        if plan.is_empty:
            # Nothing runs: waiting windows need capacity (a cross-attention slot, blocks) that a finished request's
            # retained window still holds; it comes back when its caller releases the window. Wait, never fail.
            return outputs
        self.steps += 1
        self._record_admissions(plan.prefill)
        if plan.encode:
            outputs += self._encode_contained(plan.encode)
        self.runner.copy_blocks(plan.block_copies)
        for group in (plan.prefill, plan.decode):
            group = [seq for seq in group if seq.request.request_id in self.requests]
            if group:
                outputs += self._run_group_contained(group)
        align = [request for request in plan.align if request.request_id in self.alignment_requests]
        if align:
            outputs += self._run_alignments_contained(align)
        return outputs

    # --- encoding split across steps ----------------------------------------------------------------
    def _windows_to_encode(self) -> list[Request]:
        """The next windows to encode across steps: waiting requests near the head of the queue whose window has
        no slot yet, as many as a step may encode and slots allow; best-effort ones only when nothing more urgent
        runs, and one at a time. Only the first few waiting requests are looked at, so encoded windows that wait
        for admission stay bounded."""
        encoder = self.scheduler.encoder_windows_per_step
        most_urgent = min((r.priority for r in self.scheduler.running), default=None)
        picked: list[Request] = []
        for request in itertools.islice(self.scheduler.waiting, encoder):  # no copy of a long queue per step
            window = request.window
            if window.slot is not None or any(p.window is window for p in picked):
                continue
            if picked and self.runner.frames_for(request) != self.runner.frames_for(picked[0]):
                break  # one batch, one length (a shortened audio context): the next batch takes it
            if most_urgent is not None and request.priority > most_urgent:
                break
            if len(picked) >= self.slot_pool.num_free:
                break
            picked.append(request)
            if request.priority > 0:
                break
        return picked

    def _advance_encoder(self) -> list[RequestOutput]:
        """Run this step's share of the encoder: start a batch when none is in flight, then a few layers of it. A
        failing chunk falls back to whole-window encodes one by one, so only the faulty window's requests fail."""
        encoder = self.chunked_encoder
        if not encoder.busy:
            requests = self._windows_to_encode()
            if not requests:
                return []
            for request in requests:
                request.window.slot = self.slot_pool.allocate()
                request.window.encoding = True
            encoder.begin(requests)
        try:
            done = self.runner.encode_chunk(encoder.batch, encoder.next_stop())
        except Exception as exc:
            logger.warning("encoder chunk failed (%s); encoding its windows one by one", exc)
            batch = encoder.end()
            return self._encode_contained([r for r in batch.requests if r.cross_slot is not None])
        if done:
            encoder.end()
        return []

    # --- fault containment --------------------------------------------------------------------------
    # A model pass is idempotent until its results are applied (the runner advances num_computed only after a
    # successful forward; cache writes repeat the same values), so a failed batch is retried request by request:
    # the request that fails alone is finished with an error, and the rest of the batch carries on as if nothing
    # happened. Out-of-memory errors that only a full batch hits are healed the same way.
    def _one_by_one(self, what: str, units: list, run: Callable[[list], list], fail: Callable[[object, Exception], list]
                    ) -> list:
        """Run the units (one per request) together; if that raises, run each alone and fail those that still do."""
        try:
            return run(units)
        except Exception as exc:
            if len(units) == 1:
                return fail(units[0], exc)
            logger.warning("%s batch of %d requests failed (%s); retrying one by one", what, len(units), exc)
            return [out for unit in units for out in self._one_by_one(what, [unit], run, fail)]

    def _encode_contained(self, requests: list[Request | AlignmentRequest]) -> list[RequestOutput]:
        def encode(batch: list[Request | AlignmentRequest]) -> list[RequestOutput]:
            self.runner.encode(batch)
            return []

        return self._one_by_one("encoder", requests, encode, self._fail_window)

    def _fail_window(self, request: Request | AlignmentRequest, exc: Exception) -> list[RequestOutput]:
        """The window's encoder pass failed: fail every request that reads it (its slot holds no valid K/V)."""
        window = request.window
        victims = [r for r in self.requests.values() if r.window is window]
        aligners = [r for r in self.alignment_requests.values() if r.window is window]
        return [self._fail(victim, exc) for victim in victims] + [self._fail_alignment(r, exc) for r in aligners]

    def _run_alignments_contained(self, requests: list[AlignmentRequest]) -> list[RequestOutput]:
        return self._one_by_one("alignment", requests, self._run_alignments,
                                lambda request, exc: [self._fail_alignment(request, exc)])

    def _run_group_contained(self, seqs: list[Sequence]) -> list[RequestOutput]:
        """Decide the group's tokens, request by request if the batch fails (a request's beams stay together),
        then apply them. Only deciding is contained: applying changes engine state and is not retried."""
        by_request: dict[int, list[Sequence]] = {}
        for seq in seqs:
            by_request.setdefault(id(seq.request), []).append(seq)

        def decide(units: list[list[Sequence]]) -> list[tuple[list[Sequence], _GroupDecision]]:
            batch = [seq for unit in units for seq in unit]
            computed = [seq.num_computed for seq in batch]
            try:
                return [(batch, self._decide(batch))]
            except Exception:
                for seq, count in zip(batch, computed):
                    seq.num_computed = count  # undo the runner's advance: the retry feeds the same tokens again
                raise

        outcomes = self._one_by_one("decoder", list(by_request.values()), decide,
                                    lambda unit, exc: [self._fail(unit[0].request, exc)])
        outputs: list[RequestOutput] = []
        for outcome in outcomes:
            outputs += self._apply(*outcome) if isinstance(outcome, tuple) else [outcome]
        return outputs

    def _fail(self, request: Request, exc: BaseException | str) -> RequestOutput:
        """Finish one request with an error; its blocks and slot go back to the pools, the engine goes on."""
        reason = self._record_failure(request.request_id, exc)
        self._finish(request, RequestStatus.FINISHED_ERROR)
        seq = request.seqs[0]
        return RequestOutput(request.request_id, list(seq.output), [], True, RequestStatus.FINISHED_ERROR.value,
                             seq.sum_logprob, request.no_speech_prob, error=reason)

    def _fail_alignment(self, request: AlignmentRequest, exc: BaseException | str) -> RequestOutput:
        reason = self._record_failure(request.request_id, exc)
        self._abort_alignment(request.request_id)
        return RequestOutput(request.request_id, [], [], True, RequestStatus.FINISHED_ERROR.value, 0.0, math.nan,
                             error=reason)

    def _record_failure(self, request_id: str, exc: BaseException | str) -> str:
        """Log and count a request the engine fails; returns the reason its caller is given."""
        reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        logger.error("request %s failed inside the engine: %s", request_id, reason)
        self.failed_requests += 1
        return reason

    # --- one group: decide (model, rules, sampling), then apply (state) ---------------------------------
    def _decide(self, seqs: list[Sequence]) -> "_GroupDecision":
        """Everything that can fail on the model's side, with no effect on engine state but the runner's advance."""
        step = self.runner.run(seqs)
        # Whisper's rules for every row at once (the vllm_whisper._C op when built, else sampling/batched.py).
        logits = cap_timestamps(step.logits, [self._timestamp_cap(s.request) for s in seqs],
                                self.loaded.tokenizer.special.timestamp_begin)
        ruled = ops.apply_whisper_logits_rules(logits, [s.request.params.rules for s in seqs],
                                               [s.output for s in seqs])
        broken = ~torch.isfinite(step.logits).all(dim=-1)  # NaN / inf raw logits: a numerical fault in that row
        broken_rows = set(torch.nonzero(broken).flatten().tolist()) if bool(broken.any()) else set()
        beam_rows: dict[str, list[int]] = {}
        plain_rows: list[int] = []
        for row, seq in enumerate(seqs):
            if row in broken_rows:
                continue
            if seq.request.is_beam_search:
                beam_rows.setdefault(seq.request.request_id, []).append(row)
            else:
                plain_rows.append(row)
        failed = {seqs[row].request.request_id for row in broken_rows}
        beam_rows = {rid: rows for rid, rows in beam_rows.items() if rid not in failed}
        # Penalties (only when a row asks for them; otherwise `scores` is `ruled` itself) steer the choice; the
        # log-probabilities the fallback checks read stay those of the ruled distribution.
        scores = ruled
        if any(s.request.params.has_penalties for s in seqs):
            scores = apply_penalties(ruled, [s.request.params for s in seqs], [s.request.prompt for s in seqs],
                                     [s.output for s in seqs])
        sampled = None
        if plain_rows:
            plain = [seqs[i] for i in plain_rows]
            sampled = sample(scores[plain_rows], [s.request.params for s in plain],
                             [s.request.generator for s in plain],
                             None if scores is ruled else ruled[plain_rows])
        beams = {rid: torch.log_softmax(scores[rows].float(), dim=-1) for rid, rows in beam_rows.items()}
        return _GroupDecision(step.no_speech_probs, failed, plain_rows, sampled, beams)

    def _timestamp_cap(self, request: Request) -> int | None:
        """The last timestamp index a shortened window may emit (its audio's end), None for a full window."""
        frames = request.cross_frames
        if frames is None or frames >= self.runner.max_frames:
            return None
        return last_timestamp_index(request.audio_seconds)

    def _apply(self, seqs: list[Sequence], decision: "_GroupDecision") -> list[RequestOutput]:
        """Record the decided tokens: append, finish, fork beams, and fail the rows whose logits were broken."""
        failed = decision.failed
        outputs = [self._fail(self.requests[rid], "the model produced non-finite logits (NaN or inf) for this "
                              "request") for rid in failed if rid in self.requests]
        now = time.monotonic()
        for seq, no_speech in zip(seqs, decision.no_speech_probs):
            request = seq.request
            if request.request_id in failed:
                continue
            if no_speech is not None and math.isnan(request.no_speech_prob):
                request.no_speech_prob = no_speech
            self._record_token_time(request, now)
        if decision.sampled is not None:
            for row, token, logprob in zip(decision.plain_rows, decision.sampled.tokens, decision.sampled.logprobs):
                outputs.append(self._advance(seqs[row], token, logprob))
        for rid, logprobs in decision.beams.items():
            outputs += self._beam_step(self.requests[rid], logprobs)
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
    def _record_admissions(self, seqs: list[Sequence]) -> None:
        """Count each window's prompt and queue time once, at its first admission (not after a preemption)."""
        now = time.monotonic()
        for seq in seqs:
            request = seq.request
            if request.scheduled_time is not None:
                continue
            request.scheduled_time = now
            self.prompt_tokens += len(request.prompt)
            if self._timings is not None:
                self._timings.queue_times.append(now - request.arrival_time)

    def _record_token_time(self, request: Request, now: float) -> None:
        """Note the step that gave the request a token; the gap since its previous one is an inter-token latency
        (a request's beams share one step)."""
        if request.first_token_time is None:
            request.first_token_time = now
        elif self._timings is not None and request.last_token_time != now:
            self._timings.inter_token_latencies.append(now - request.last_token_time)
        request.last_token_time = now

    def take_iteration_stats(self) -> IterationStats:
        """What the steps since the last call measured. The first call returns nothing and starts recording the
        per-window timings, so offline use (which never calls this) keeps no growing lists."""
        counters = (self.prompt_tokens, self.generated_tokens, self.scheduler.num_preemptions)
        taken = self._timings or IterationStats()
        if self._timings is not None:
            taken.prompt_tokens, taken.generation_tokens, taken.preemptions = (
                now - before for now, before in zip(counters, self._taken_counters))
        self._timings, self._taken_counters = IterationStats(), counters
        return taken

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
            failed_requests=self.failed_requests,
            alignment_passes=counters.alignment_passes,
            prompt_tokens=self.prompt_tokens,
        )
