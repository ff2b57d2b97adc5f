"""POST /v1/audio/transcriptions and /v1/audio/translations: read the upload, check it, run the file's stream
on the shared engine and answer in the asked format, or as server-sent events.

Every client mistake is an OpenAIError raised before the engine sees anything; a client that goes away
(closed stream or dropped connection) cancels its transcription, which aborts its window and frees its cache.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from vllm_whisper.audio.decode import AudioDecodeError, AudioTooLongError, load_audio
from vllm_whisper.engine.async_engine import AsyncLLMEngine, EngineDeadError, EngineRequestError
from vllm_whisper.entrypoints.body_limits import BodyReadTimeout, BodyTooLarge
from vllm_whisper.entrypoints.drain import Drain, ServerDraining
from vllm_whisper.entrypoints.metrics import ServerMetrics
from vllm_whisper.entrypoints.openai.errors import OpenAIError, bad_request
from vllm_whisper.entrypoints.openai.protocol import TranscriptionRequest, parse_form
from vllm_whisper.entrypoints.request_log import STATUS_OF_REASON, RequestRecord, new_request_id
from vllm_whisper.languages import LANGUAGES
from vllm_whisper.outputs import sse
from vllm_whisper.outputs.formats import render
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.transcribe.result import TranscriptionResult
from vllm_whisper.transcribe.stream import SegmentClosed, TextDelta, TranscriptionFinished, stream_transcription

logger = logging.getLogger(__name__)
MAX_FORM_FIELDS = 64


@dataclass
class ServingLimits:
    max_audio_bytes: int
    max_concurrent_requests: int  # beyond this many accepted requests the server answers 429
    max_new_tokens: int
    max_audio_seconds: float | None = None  # decoded duration limit, checked while decoding (before resampling)
    upload_read_timeout: float | None = 30.0  # longest pause inside an upload body before it is refused

    @property
    def max_body_bytes(self) -> int:
        """The most bytes read of one request body: the audio limit plus room for the form's other fields."""
        return self.max_audio_bytes + 2**20


class TranscriptionService:
    """Turns upload forms into engine work for one loaded model."""

    def __init__(self, engine: AsyncLLMEngine, served_names: list[str], limits: ServingLimits,
                 metrics: ServerMetrics, drain: Drain | None = None):
        self.engine = engine
        self.drain = drain or Drain()
        self.loaded = engine.loaded
        self.served_names = served_names
        self.limits = limits
        self.metrics = metrics
        self.in_progress = 0
        # A server with several models routes each upload by its `model` field to that model's service
        # (entrypoints/model_registry.py); None: this service answers its own names alone.
        self.route: Callable[[str | None], Awaitable[TranscriptionService]] | None = None

    async def handle(self, request: Request, task: str) -> Response:
        """Serve one upload; however it ends, it gets one line on the request log (entrypoints/request_log.py)."""
        record = RequestRecord(new_request_id("trsl" if task == "translate" else "trsc"), self.served_names[0], task)
        try:
            return await self._handle(request, task, record)
        except OpenAIError as exc:
            record.finish(str(exc.status))
            raise
        except (ClientDisconnect, asyncio.CancelledError):
            record.finish("aborted")
            raise
        except Exception:
            record.finish("500")
            raise

    async def _handle(self, request: Request, task: str, record: RequestRecord) -> Response:
        self._check_declared_size(request)
        form_request, data, filename = await self._read_form(request)
        target = await self.route(form_request.model) if self.route is not None else self
        record.model = target.served_names[0]
        return await target._serve(request, task, record, form_request, data, filename)

    async def _serve(self, request: Request, task: str, record: RequestRecord, form_request: TranscriptionRequest,
                     data: bytes, filename: str) -> Response:
        """Run a read upload on this service's model."""
        params = self._params(form_request, task)
        if self.in_progress >= self.limits.max_concurrent_requests:
            raise OpenAIError(429, f"The server is busy with {self.in_progress} requests; retry shortly.",
                              "rate_limit_exceeded", code="rate_limit_exceeded", retry_after=1)
        if not self.engine.is_running:
            raise OpenAIError(503, "The engine has stopped; restart the server.", "server_error", retry_after=5)
        self.in_progress += 1
        self.metrics.requests_in_progress.labels(self.metrics.model_name).inc()
        released = False
        streaming = False  # once the streaming response exists, its generator releases the slot

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_progress -= 1
                self.metrics.requests_in_progress.labels(self.metrics.model_name).dec()

        try:
            audio = await self._decode(data, filename)
            request_id, timer = record.request_id, record
            record.audio_seconds = len(audio) / 16000
            if form_request.stream:
                chunks = sse.StreamChunks.start(task, form_request.model or self.served_names[0])
                request_id = record.request_id = chunks.id  # logged under the id its client sees
                record.streamed = True
                events = self._sse(stream_transcription(self.engine, audio, params, request_id), form_request,
                                   chunks, timer, release)
                response = StreamingResponse(events, media_type="text/event-stream", background=BackgroundTask(release),
                                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
                streaming = True
                return response
            result, _ = await self._run_to_end(request, audio, params, request_id, timer)
            body, media_type = render(result, form_request.response_format, task=task,
                                      timestamp_granularities=form_request.timestamp_granularities)
            self._request_ended(timer, "stop", result.duration)
            if isinstance(body, dict):
                return JSONResponse(body, media_type=media_type)
            return Response(body, media_type=media_type)
        finally:
            if not streaming:
                release()

    # --- input ------------------------------------------------------------------------------------
    def _check_declared_size(self, request: Request) -> None:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.limits.max_audio_bytes + 64 * 1024:
            raise self._too_large(int(declared))

    def _too_large(self, size: int) -> OpenAIError:
        limit_mb = self.limits.max_audio_bytes / 2**20
        return OpenAIError(413, f"The upload is {size / 2**20:.1f} MB; the limit is {limit_mb:g} MB.", param="file",
                           code="file_too_large")

    async def _read_form(self, request: Request) -> tuple[TranscriptionRequest, bytes, str]:
        if "multipart/form-data" not in request.headers.get("content-type", ""):
            raise bad_request("Send the audio as multipart/form-data with a 'file' field.", "file")
        try:
            form = await request.form(max_files=2, max_fields=MAX_FORM_FIELDS)
        except ClientDisconnect:
            raise
        except BodyTooLarge as exc:  # stopped reading at the limit, chunked uploads included
            limit_mb = self.limits.max_audio_bytes / 2**20
            raise OpenAIError(413, f"The upload is larger than the limit of {limit_mb:g} MB; reading stopped after "
                              f"{exc.received / 2**20:.1f} MB.", param="file", code="file_too_large") from None
        except BodyReadTimeout as exc:
            raise OpenAIError(408, f"The upload stalled: {exc}.", param="file", code="request_timeout") from None
        except Exception as exc:  # malformed multipart bodies: the parser's message says what is wrong
            raise bad_request(f"Could not parse the multipart form: {exc}") from exc
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise bad_request("The 'file' field with the audio is missing.", "file")
        data = await upload.read(self.limits.max_audio_bytes + 1)
        await form.close()
        if len(data) > self.limits.max_audio_bytes:
            raise self._too_large(len(data))
        if not data:
            raise bad_request("The uploaded file is empty.", "file", "empty_file")
        parsed = parse_form(form, form.getlist)
        if self.route is None and parsed.model and parsed.model not in self.served_names:
            raise OpenAIError(404, f"The model {parsed.model!r} does not exist; this server serves "
                              f"{', '.join(self.served_names)}.", param="model", code="model_not_found")
        return parsed, data, upload.filename or "upload"

    def _params(self, form_request: TranscriptionRequest, task: str) -> TranscriptionParams:
        params = form_request.to_params(task, self.limits.max_new_tokens)
        max_beams = self.engine.config.max_num_seqs
        if params.beam_size > max_beams:
            raise bad_request(f"n asks for {params.beam_size} beams; this server runs at most {max_beams} sequences "
                              f"at once (--max-num-seqs)", "n")
        tokenizer = self.loaded.tokenizer
        if not tokenizer.is_multilingual:
            if task == "translate":
                raise bad_request(f"The English-only model {self.served_names[0]!r} cannot translate.", "model")
            if params.language not in (None, "en"):
                raise bad_request(f"The English-only model {self.served_names[0]!r} only transcribes English, not "
                                  f"{LANGUAGES.get(params.language, params.language)}.", "language",
                                  "unsupported_language")
        elif params.language is not None and params.language not in tokenizer.language_to_id:
            raise bad_request(f"The language {params.language!r} is not supported by this model.", "language",
                              "unsupported_language")
        return params

    async def _decode(self, data: bytes, filename: str):
        try:
            return await asyncio.to_thread(load_audio, data, filename, self.limits.max_audio_seconds)
        except AudioTooLongError as exc:
            raise bad_request(f"{exc} (this server's --max-audio-duration).", "file", "audio_too_long") from exc
        except AudioDecodeError as exc:
            raise bad_request(f"Invalid or unsupported audio file: {exc}", "file", "invalid_audio") from exc

    # --- output -----------------------------------------------------------------------------------
    async def _run_to_end(self, request: Request, audio, params: TranscriptionParams, request_id: str,
                          timer: RequestRecord) -> tuple[TranscriptionResult, int]:
        """Run the file to the end, cancelling it if the client disconnects while it waits."""
        async def consume() -> tuple[TranscriptionResult, int]:
            async with aclosing(stream_transcription(self.engine, audio, params, request_id)) as events, \
                    aclosing(self.drain.until_expired(events)) as drained:
                async for event in drained:
                    if isinstance(event, TextDelta):
                        timer.first_text()
                    elif isinstance(event, TranscriptionFinished):
                        return event.result, event.generated_tokens
            raise RuntimeError("the transcription stream ended without a result")

        work = asyncio.create_task(consume())
        watcher = asyncio.create_task(_wait_for_disconnect(request))
        try:
            done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if work not in done:
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                self._request_ended(timer, "abort")
                raise ClientDisconnect()
            return self._engine_result(work)
        finally:
            watcher.cancel()

    @staticmethod
    def _engine_result(work: asyncio.Task) -> tuple[TranscriptionResult, int]:
        try:
            return work.result()
        except (EngineDeadError, ServerDraining) as exc:
            raise OpenAIError(503, str(exc), "server_error", retry_after=5) from exc
        except EngineRequestError as exc:  # a fault in this request's model pass; the engine goes on
            raise OpenAIError(500, f"Internal error: {exc}", "server_error", code="internal_error") from exc
        except ValueError as exc:  # request options the model cannot honour
            raise bad_request(str(exc)) from exc

    async def _sse(self, events: AsyncIterator, form_request: TranscriptionRequest, chunks: sse.StreamChunks,
                   timer: RequestRecord, release) -> AsyncIterator[str]:
        """The request's events in the shape both OpenAI's and vLLM's clients read (see outputs/sse.py), then
        [DONE], also after an error event."""
        fmt = form_request.response_format
        cues = fmt in ("srt", "vtt")
        include_usage = form_request.stream_include_usage is not False  # usage on the done event by default
        continuous = include_usage and form_request.stream_continuous_usage_stats
        index = 0
        reason = "abort"
        tokens = 0
        decoded = 0  # tokens decoded so far, for continuous usage
        duration = 0.0
        try:
            async with aclosing(events) as stream, aclosing(self.drain.until_expired(stream)) as drained:
                async for event in drained:
                    if isinstance(event, TextDelta):
                        decoded += event.tokens
                    so_far = sse.usage(timer.audio_seconds, decoded) if continuous else None
                    if isinstance(event, TextDelta) and not cues:
                        timer.first_text()
                        yield chunks.text_delta(event.text, so_far)
                    elif isinstance(event, SegmentClosed) and cues:
                        timer.first_text()
                        index += 1
                        yield chunks.cue_delta(event.segment, index, fmt, so_far)
                    elif isinstance(event, TranscriptionFinished):
                        result, duration = event.result, event.result.duration
                        tokens = max(event.generated_tokens, decoded)
                        text = render(result, fmt)[0] if cues else result.text
                        final_usage = sse.usage(duration, tokens)
                        yield chunks.text_done(text, final_usage if include_usage else None)
                        if form_request.stream_include_usage:
                            yield chunks.usage_only(final_usage)
                        reason = "stop"
        except (EngineDeadError, EngineRequestError, ServerDraining, ValueError) as exc:
            reason = "error"
            logger.warning("stream failed: %s", exc)
            yield sse.error_event(str(exc))
        finally:
            release()
            self._request_ended(timer, reason, duration)
        yield sse.DONE

    def _request_ended(self, record: RequestRecord, reason: str, audio_seconds: float = 0.0) -> None:
        """A request the engine worked on ended (reason: stop, abort or error): its metrics and its log line."""
        self.metrics.observe_request(audio_seconds, record.first_token, record.elapsed(), reason)
        record.finish(STATUS_OF_REASON[reason])


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
