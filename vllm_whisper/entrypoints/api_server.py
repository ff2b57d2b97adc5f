"""The OpenAI-compatible server: `python -m vllm_whisper.entrypoints.api_server --model tiny.en --port 8000`.

FastAPI on uvicorn. One model and one async engine per process; routes convert HTTP into TranscriptionParams
and back (entrypoints/openai/). Flags follow vLLM's names where the concept is the same.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass

import numpy as np
import torch
from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, PlainTextResponse, Response

from vllm_whisper import __version__
from vllm_whisper.config import EngineConfig
from vllm_whisper.engine.async_engine import AsyncLLMEngine
from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.entrypoints.metrics import ServerMetrics
from vllm_whisper.entrypoints.openai.errors import OpenAIError
from vllm_whisper.entrypoints.openai.realtime import RealtimeSession, check_websocket_key
from vllm_whisper.entrypoints.openai.serving_transcription import ServingLimits, TranscriptionService
from vllm_whisper.model_executor.loader import LoadedModel, load_model

logger = logging.getLogger("vllm_whisper.api_server")
DEFAULT_MODEL = "tiny.en"
DECODER_CONTEXT = 448


@dataclass
class ServerState:
    """What the routes share: the model, the engine and the service around them."""

    loaded: LoadedModel
    engine: AsyncLLMEngine
    service: TranscriptionService
    metrics: ServerMetrics
    served_names: list[str]
    api_key: str | None
    created: int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="vllm-whisper OpenAI-compatible speech-to-text server")
    add_server_arguments(parser)
    return parser


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="alias (tiny.en, base), model directory or hub id")
    parser.add_argument("--served-model-name", nargs="+", default=None,
                        help="names clients may send as `model` (default: the --model value and whisper-1)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"),
                        help="require `Authorization: Bearer KEY` on /v1 routes (or set VLLM_API_KEY)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    parser.add_argument("--quantization", choices=("int8",), default=None,
                        help="int8: int8 weights for the linear layers (CPU, float32 activations; much faster)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--max-num-seqs", type=int, default=64, help="most window decodes running at once")
    parser.add_argument("--max-model-len", type=int, default=DECODER_CONTEXT,
                        help="decoder tokens per window, prompt included (Whisper's context is 448)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--kv-cache-space", type=float, default=4.0, help="GiB for the caches on the CPU")
    parser.add_argument("--attention-backend", choices=("auto", "torch", "triton"), default="auto",
                        help="attention kernels: auto (Triton on CUDA, torch on CPU), torch, triton")
    parser.add_argument("--max-encoder-windows-per-step", type=int, default=None,
                        help="new 30 s windows encoded per engine step (default 16 on CUDA, 2 on CPU): lower keeps "
                             "running streams' token gaps short, higher admits bursts faster")
    parser.add_argument("--enforce-eager", action="store_true",
                        help="never capture CUDA graphs for decode steps (they are captured on CUDA with Triton)")
    parser.add_argument("--max-audio-filesize-mb", type=float, default=25.0)
    parser.add_argument("--max-waiting-requests", type=int, default=256,
                        help="requests accepted beyond --max-num-seqs before answering 429")
    parser.add_argument("--allowed-origins", default=None,
                        help='CORS origins: a JSON list (\'["https://a.example"]\') or a comma-separated list')
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def create_state(args: argparse.Namespace) -> ServerState:
    """Load the model and start the engine thread."""
    if not 16 <= args.max_model_len <= DECODER_CONTEXT:
        raise ValueError(f"--max-model-len must be between 16 and {DECODER_CONTEXT}, got {args.max_model_len}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_model(args.model, dtype=args.dtype, device=device, quantization=args.quantization)
    config = EngineConfig(max_num_seqs=args.max_num_seqs, kv_cache_space_gib=args.kv_cache_space,
                          gpu_memory_utilization=args.gpu_memory_utilization,
                          attention_backend=args.attention_backend, enforce_eager=args.enforce_eager,
                          max_encoder_windows_per_step=args.max_encoder_windows_per_step)
    llm_engine = LLMEngine(loaded, config)
    warm_up(llm_engine)
    engine = AsyncLLMEngine(llm_engine)
    served = args.served_model_name or [args.model, "whisper-1"]
    metrics = ServerMetrics.create(served[0])
    limits = ServingLimits(
        max_audio_bytes=int(args.max_audio_filesize_mb * 2**20),
        max_concurrent_requests=args.max_num_seqs + args.max_waiting_requests,
        # Whisper keeps half the context for the previous-text prompt, as the reference does.
        max_new_tokens=min(224, args.max_model_len // 2),
    )
    service = TranscriptionService(engine, served, limits, metrics)
    return ServerState(loaded, engine, service, metrics, served, args.api_key, int(time.time()))


def warm_up(engine: LLMEngine) -> None:
    """Run one short window through the engine and load the VAD model, so the first client does not pay for
    lazy initialisation (kernel selection, allocator growth, model files)."""
    from vllm_whisper.audio.vad import speech_probabilities
    from vllm_whisper.params import TranscriptionParams
    from vllm_whisper.transcribe.batch import transcribe_batch

    noise = np.random.default_rng(0).normal(0, 0.01, 16000).astype(np.float32)
    started = time.perf_counter()
    transcribe_batch(engine, [noise], TranscriptionParams(max_new_tokens=8, temperature=(0.0,),
                                                          silence_threshold_db=None))
    speech_probabilities(noise)
    logger.info("warm-up done in %.2f s", time.perf_counter() - started)


def build_app(state: ServerState, allowed_origins: list[str] | None = None) -> FastAPI:
    app = FastAPI(title="vllm-whisper", version=__version__,
                  description="OpenAI-compatible speech-to-text on a batched Whisper engine.")
    app.state.server = state
    if allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=allowed_origins, allow_credentials=True,
                           allow_methods=["*"], allow_headers=["*"])
    _add_error_handlers(app)

    @app.middleware("http")
    async def require_api_key(request: Request, call_next):
        if state.api_key and request.url.path.startswith("/v1") and request.method != "OPTIONS":
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(token.encode(), state.api_key.encode()):
                error = OpenAIError(401, "Missing or wrong API key: send `Authorization: Bearer <key>`.",
                                    code="invalid_api_key")
                return JSONResponse(error.body(), status_code=401, headers=error.headers())
        return await call_next(request)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        return await state.service.handle(request, "transcribe")

    @app.post("/v1/audio/translations")
    async def translations(request: Request) -> Response:
        if not state.loaded.tokenizer.is_multilingual:
            raise OpenAIError(400, f"The English-only model {state.served_names[0]!r} cannot translate; serve a "
                              "multilingual model such as 'base'.", param="model")
        return await state.service.handle(request, "translate")

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        intent = websocket.query_params.get("intent", "transcription")
        if not check_websocket_key(websocket, state.api_key):
            error = OpenAIError(401, "Missing or wrong API key: send `Authorization: Bearer <key>`.",
                                code="invalid_api_key")
            if "websocket.http.response" in websocket.scope.get("extensions", {}):
                await websocket.send_denial_response(JSONResponse(error.body(), 401, headers=error.headers()))
            else:
                await websocket.close(code=1008, reason="missing or wrong API key")
            return
        subprotocols = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        await websocket.accept(subprotocol="realtime" if "realtime" in subprotocols else None)
        if intent != "transcription":
            await websocket.send_json({"type": "error", "error": {
                "type": "invalid_request_error", "code": "unsupported_intent", "param": "intent", "event_id": None,
                "message": "this server supports intent=transcription only"}})
            await websocket.close(code=1003)
            return
        session = RealtimeSession(websocket, state.engine, state.served_names,
                                  state.loaded.tokenizer.is_multilingual)
        await session.run()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card(state, name) for name in state.served_names]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        if model_id not in state.served_names:
            raise OpenAIError(404, f"The model {model_id!r} does not exist.", param="model", code="model_not_found")
        return _model_card(state, model_id)

    @app.get("/health")
    async def health() -> Response:
        if not state.engine.is_running:
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict:
        return {"version": __version__}

    @app.get("/metrics")
    async def metrics() -> Response:
        state.metrics.update_engine(state.engine.stats)
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _model_card(state: ServerState, name: str) -> dict:
    return {"id": name, "object": "model", "created": state.created, "owned_by": "vllm-whisper",
            "root": state.loaded.name, "max_model_len": DECODER_CONTEXT,
            "languages": sorted(state.loaded.tokenizer.supported_languages)}


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        body = OpenAIError(exc.status_code, str(exc.detail), error_type).body()
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(OpenAIError(400, str(exc)).body(), status_code=400)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_: Request, __: ClientDisconnect) -> Response:
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error")
        body = OpenAIError(500, f"Internal server error: {type(exc).__name__}", "server_error").body()
        return JSONResponse(body, status_code=500)


def parse_origins(value: str | None) -> list[str] | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("["):
        origins = json.loads(value)
        if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
            raise ValueError("--allowed-origins must be a JSON list of strings")
        return origins
    return [o.strip() for o in value.split(",") if o.strip()]


def run_server(args: argparse.Namespace) -> None:
    import uvicorn

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    origins = parse_origins(args.allowed_origins)
    state = create_state(args)
    app = build_app(state, origins)
    logger.info("serving %s as %s on http://%s:%d", args.model, ", ".join(state.served_names), args.host, args.port)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    finally:
        state.engine.shutdown()


def main(argv: list[str] | None = None) -> None:
    run_server(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
