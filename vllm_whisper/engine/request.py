"""A window request: one 30 s window's features, its decoder prompt and how to sample, plus its progress."""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from vllm_whisper.engine.alignment import AlignmentOutput
from vllm_whisper.engine.sampler import SamplingParams
from vllm_whisper.engine.windows import WindowState


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stop"  # end-of-text sampled
    FINISHED_LENGTH = "length"  # max_new_tokens or the decoder's 448 positions reached
    FINISHED_ABORTED = "abort"
    FINISHED_ERROR = "error"  # the step failed for this request alone (see LLMEngine's fault containment)

    @property
    def finished(self) -> bool:
        return self is not RequestStatus.WAITING and self is not RequestStatus.RUNNING


@dataclass
class Sequence:
    """One hypothesis of a request: its sampled tokens and its self-attention blocks (each beam has one)."""

    request: "Request"
    output: list[int] = field(default_factory=list)
    sum_logprob: float = 0.0
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache

    @property
    def tokens(self) -> list[int]:
        return self.request.prompt + self.output

    @property
    def num_tokens(self) -> int:
        return len(self.request.prompt) + len(self.output)

    @property
    def pending_tokens(self) -> list[int]:
        """Tokens to feed this step: the whole uncached context after admission, else the last sample."""
        return self.tokens[self.num_computed:]


@dataclass
class Request:
    """Engine-side state of one window decode: one sequence, or one per beam."""

    request_id: str
    features: Tensor  # (n_mels, 3000) log-mel of the window
    prompt: list[int]
    params: SamplingParams
    max_tokens: int  # min(max_new_tokens, room left in the decoder context)
    audio_seconds: float = 30.0
    arrival_time: float = field(default_factory=time.monotonic)
    no_speech_prob: float = math.nan
    status: RequestStatus = RequestStatus.WAITING
    window: WindowState | None = None  # the window (and cross-attention slot) this request decodes
    generator: torch.Generator | None = None
    priority: int = 0  # lower is admitted first (vLLM's convention); equal priorities keep arrival order
    # Encode this window over all 1500 frames even under `--audio-context auto`: its words will be aligned, and the
    # alignment heads time words well only over the context they were trained on.
    full_audio_context: bool = False
    # Seconds after arrival from which a deferred request (priority > 0) counts as priority 0: its latency budget, so
    # work that yields to uploads is still never starved by them. None: it stays at its priority.
    urgent_after: float | None = None
    first_token_time: float | None = None
    scheduled_time: float | None = None  # first admission (queue time = scheduled_time - arrival_time)
    last_token_time: float | None = None  # the step that produced its latest token (inter-token latency)
    seqs: list[Sequence] = field(default_factory=list)
    finished_beams: dict[tuple[int, ...], float] = field(default_factory=dict)  # ended with end-of-text
    beam_steps: int = 0

    def __post_init__(self) -> None:
        if not self.seqs:
            self.seqs = [Sequence(self)]

    @property
    def urgent_at(self) -> float | None:
        """When a deferred request is promoted to priority 0 (monotonic seconds); None when never."""
        return None if self.urgent_after is None or self.priority == 0 else self.arrival_time + self.urgent_after

    @property
    def cross_slot(self) -> int | None:
        return None if self.window is None else self.window.slot

    @property
    def cross_frames(self) -> int | None:
        """Encoder frames its window's slot holds (None until encoded)."""
        return None if self.window is None else self.window.frames

    @property
    def is_beam_search(self) -> bool:
        return self.params.beam_size > 1

    @property
    def num_seqs_reserved(self) -> int:
        """Sequences this request may run at once (beams are counted in full from admission)."""
        return max(self.params.beam_size, len(self.seqs))


@dataclass
class RequestOutput:
    """What a step produced for one request (cumulative tokens plus the new ones)."""

    request_id: str
    tokens: list[int]  # sampled tokens so far, without end-of-text
    new_tokens: list[int]
    finished: bool
    finish_reason: str | None
    sum_logprob: float
    no_speech_prob: float
    error: str | None = None  # set (with finish_reason "error") when the engine failed this request
    alignment: AlignmentOutput | None = None  # set for an alignment request (which samples no tokens)

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / (len(self.tokens) + 1)
