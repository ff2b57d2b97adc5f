"""The OpenAI-compatible server: `python -m vllm_whisper.entrypoints.api_server --model tiny.en --port 8000`.

FastAPI on uvicorn. One async engine per served model (entrypoints/model_registry.py routes by `model`); routes convert HTTP into TranscriptionParams
and back (entrypoints/openai/). Flags follow vLLM's names where the concept is the same.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # `python -m vllm_whisper.entrypoints.api_server ...` runs as `vllm-whisper serve ...`: the command line is
    # checked and the port bound before the heavy imports below, so a mistake (a busy port, a bad option, a
    # missing package) fails within a second, in one line.
    from vllm_whisper.entrypoints.cli import serve_main

    sys.exit(serve_main(sys.argv[1:], prog="python -m vllm_whisper.entrypoints.api_server"))

import argparse
import json
import logging
import secrets
import socket
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, PlainTextResponse, Response

from vllm_whisper import __version__
from vllm_whisper.entrypoints.body_limits import BodyLimitMiddleware, BodyReadTimeout, BodyTooLarge
from vllm_whisper.entrypoints.cli_errors import UsageError
from vllm_whisper.entrypoints.drain import Drain, run_draining
from vllm_whisper.entrypoints.header_timeout import header_deadline_protocol
from vllm_whisper.entrypoints.http_metrics import HTTPResponseCounter
from vllm_whisper.entrypoints.listen_socket import bind_server_socket
from vllm_whisper.entrypoints.memory_release import map_large_blocks_separately
from vllm_whisper.entrypoints.metrics import ServerMetrics
from vllm_whisper.entrypoints.model_registry import ModelEntry, ModelRegistry
from vllm_whisper.entrypoints.model_runtime import ModelRuntime, build_runtime
from vllm_whisper.entrypoints.model_specs import model_specs
from vllm_whisper.entrypoints.openai.errors import OpenAIError
from vllm_whisper.entrypoints.openai.realtime_base import FINAL_PASS_BUDGET_S, check_websocket_key
from vllm_whisper.entrypoints.openai.realtime_endpoint import OPENAI_INTENT, RealtimeEndpoint
from vllm_whisper.entrypoints.openai.serving_transcription import TranscriptionService
from vllm_whisper.entrypoints.ray_serve.options import check_ray_flags
from vllm_whisper.entrypoints.server_args import add_server_arguments, build_server_parser  # noqa: F401 (re-export)
from vllm_whisper.entrypoints.startup_log import startup_line

logger = logging.getLogger("vllm_whisper.api_server")


@dataclass
class ServerState:
    """What the routes share: the served models (loaded or not) and the server-wide settings."""

    registry: ModelRegistry
    metrics: ServerMetrics  # one Prometheus registry; each model records under its own model_name label
    api_key: str | None
    created: int
    drain: Drain = field(default_factory=Drain)
    max_realtime_sessions: int = 32
    realtime_sessions: int = 0  # open realtime WebSockets (each also counts as one request in progress)
    realtime_turn_yield_s: float = FINAL_PASS_BUDGET_S  # --realtime-turn-yield-seconds
    protect_metrics: bool = False  # /metrics needs the API key too

    @property
    def default(self) -> ModelRuntime:
        """The first model's runtime (always loaded): what a request without `model` runs on."""
        runtime = self.registry.default.runtime
        if runtime is None:
            raise RuntimeError("the default model is not loaded")
        return runtime

    # The default model's parts, under the names a one-model server has always had.
    loaded = property(lambda self: self.default.loaded)
    engine = property(lambda self: self.default.engine)
    service = property(lambda self: self.default.service)
    stat_logger = property(lambda self: self.default.stat_logger)
    setup = property(lambda self: self.default.setup)

    @property
    def served_names(self) -> list[str]:
        """Every name a request may send as `model`, the default model's first."""
        return self.registry.served_names


def build_parser() -> argparse.ArgumentParser:
    return build_server_parser()


def create_state(args: argparse.Namespace) -> ServerState:
    """Load the model(s) and start their engine threads (with --model-ttl only the first loads now)."""
    specs = model_specs(args)
    metrics = ServerMetrics.create(specs[0].served_names[0])
    drain = Drain(timeout=args.shutdown_timeout)
    several = len(specs) > 1

    def build(entry: ModelEntry) -> ModelRuntime:
        own_metrics = metrics if entry.index == 0 else metrics.for_model(entry.spec.served_names[0])
        runtime = build_runtime(entry.spec, args, own_metrics, drain, entry.index,
                                entry.spec.name if several else None)
        if several:
            runtime.service.route = route
        return runtime

    async def route(name: str | None) -> TranscriptionService:
        return (await registry.acquire(name)).service

    registry = ModelRegistry(specs, build, getattr(args, "model_ttl", None),
                             getattr(args, "models_memory_budget_gib", None))
    if several and (registry.ttl is not None or registry.budget_bytes is not None):
        map_large_blocks_separately()  # models may unload: their freed memory must leave the process
    registry.load_at_start()
    return ServerState(registry, metrics, args.api_key, int(time.time()), drain, args.max_realtime_sessions,
                       protect_metrics=args.protect_metrics, realtime_turn_yield_s=args.realtime_turn_yield_seconds)


def build_app(state: ServerState, allowed_origins: list[str] | None = None) -> FastAPI:
    app = FastAPI(title="vllm-whisper", version=__version__,
                  description="OpenAI-compatible speech-to-text on a batched Whisper engine.")
    app.state.server = state
    if allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=allowed_origins, allow_credentials=True,
                           allow_methods=["*"], allow_headers=["*"])
    _add_error_handlers(app)
    limits = state.service.limits
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes, read_timeout=limits.upload_read_timeout)

    @app.middleware("http")
    async def refuse_while_draining(request: Request, call_next):
        if state.drain.started and _route_path(request) != "/metrics":
            error = OpenAIError(503, "The server is shutting down; retry on another replica or later.",
                                "server_error", code="server_shutting_down", retry_after=5)
            return JSONResponse(error.body(), status_code=503, headers={**error.headers(), "Connection": "close"})
        return await call_next(request)

    @app.middleware("http")
    async def require_api_key(request: Request, call_next):
        path = _route_path(request)
        protected = path.startswith("/v1") or (state.protect_metrics and path == "/metrics")
        if state.api_key and protected and request.method != "OPTIONS":
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
        if len(state.registry.entries) == 1 and not state.loaded.tokenizer.is_multilingual:
            raise OpenAIError(400, f"The English-only model {state.served_names[0]!r} cannot translate; serve a "
                              "multilingual model such as 'base'.", param="model")
        return await state.service.handle(request, "translate")

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        intent = websocket.query_params.get("intent")  # transcription: OpenAI's protocol; none: see realtime_endpoint
        if not check_websocket_key(websocket, state.api_key):
            error = OpenAIError(401, "Missing or wrong API key: send `Authorization: Bearer <key>`.",
                                code="invalid_api_key")
            if "websocket.http.response" in websocket.scope.get("extensions", {}):
                await websocket.send_denial_response(JSONResponse(error.body(), 401, headers=error.headers()))
            else:
                await websocket.close(code=1008, reason="missing or wrong API key")
            return
        subprotocols = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        if state.realtime_sessions >= state.max_realtime_sessions or state.drain.started:
            await _refuse_websocket(websocket, state)
            return
        try:  # the session's model: ?model=NAME on the URL (the default model without it)
            runtime = await state.registry.acquire(websocket.query_params.get("model"))
        except OpenAIError as error:
            await _deny_websocket(websocket, error)
            return
        await websocket.accept(subprotocol="realtime" if "realtime" in subprotocols else None)
        if intent not in (None, OPENAI_INTENT):
            await websocket.send_json({"type": "error", "error": {
                "type": "invalid_request_error", "code": "unsupported_intent", "param": "intent", "event_id": None,
                "message": "this server supports intent=transcription (OpenAI's events) or no intent (vLLM's "
                           "realtime protocol) only"}})
            await websocket.close(code=1003)
            return
        names = state.served_names if len(state.registry.entries) == 1 else list(runtime.spec.served_names)
        endpoint = RealtimeEndpoint(websocket, intent, runtime.engine, names, runtime.loaded.tokenizer.is_multilingual,
                                    state.realtime_turn_yield_s)
        state.drain.on_start.append(endpoint.close_for_shutdown)
        state.realtime_sessions += 1
        runtime.service.in_progress += 1
        try:
            await endpoint.run()
        finally:
            state.realtime_sessions -= 1
            runtime.service.in_progress -= 1
            state.drain.on_start.remove(endpoint.close_for_shutdown)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card(state, name) for name in state.served_names]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        state.registry.entry(model_id)  # 404 naming the served models
        return _model_card(state, model_id)

    @app.get("/health")
    async def health() -> Response:
        stopped = [runtime.spec.name for runtime in state.registry.loaded if not runtime.engine.is_running]
        if stopped:
            status = "engine stopped" if len(state.registry.entries) == 1 else f"engine stopped: {', '.join(stopped)}"
            return JSONResponse({"status": status}, status_code=503)
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict:
        return {"version": __version__}

    @app.get("/metrics")
    async def metrics() -> Response:
        for runtime in state.registry.loaded:
            runtime.metrics.update_engine(runtime.engine.stats)
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # Outermost: counts what the client receives, including the other middlewares' 401 / 503 answers.
    app.add_middleware(HTTPResponseCounter, counter=state.metrics.http_responses, routes=app.router.routes)
    return app


def _route_path(request: Request) -> str:
    """The path below the app's mount point: behind Ray Serve's route_prefix the prefix arrives as root_path."""
    root, path = request.scope.get("root_path", ""), request.url.path
    return path[len(root):] if root and path.startswith(root) else path


async def _refuse_websocket(websocket: WebSocket, state: ServerState) -> None:
    """Too many realtime sessions (or draining): a 429 denial where the server can send one, else an error event
    and close code 1013 (try again later)."""
    if state.drain.started:
        error = OpenAIError(503, "The server is shutting down.", "server_error", code="server_shutting_down",
                            retry_after=5)
    else:
        error = OpenAIError(429, f"The server already runs {state.realtime_sessions} realtime sessions (its limit); "
                            "retry shortly.", "rate_limit_exceeded", code="rate_limit_exceeded", retry_after=1)
    await _deny_websocket(websocket, error, close_code=1013, reason="busy")


async def _deny_websocket(websocket: WebSocket, error: OpenAIError, close_code: int = 1008,
                          reason: str = "refused") -> None:
    """Refuse a session (busy, draining, unknown model, a model that cannot load): a denial response where the
    server can send one, else an error event and the close code."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(error.body(), error.status, headers=error.headers()))
        return
    await websocket.accept()
    await websocket.send_json({"type": "error", "error": {**error.body()["error"], "event_id": None}})
    await websocket.close(code=close_code, reason=error.code or reason)


def _model_card(state: ServerState, name: str) -> dict:
    """OpenAI's model object plus vLLM's root and max_model_len, the languages (once loaded) and `loaded`."""
    entry = state.registry.entry(name)
    runtime = entry.runtime
    card = {"id": name, "object": "model", "created": state.created, "owned_by": "vllm-whisper",
            "root": runtime.loaded.name if runtime is not None else entry.spec.engine_args.model,
            "max_model_len": entry.spec.engine_args.max_model_len, "loaded": runtime is not None}
    if runtime is not None:
        card["languages"] = sorted(runtime.loaded.tokenizer.supported_languages)
    return card


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

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        error = OpenAIError(413, f"The request body is larger than {exc.limit} bytes.", code="request_too_large")
        return JSONResponse(error.body(), status_code=413)

    @app.exception_handler(BodyReadTimeout)
    async def body_timeout(_: Request, exc: BodyReadTimeout) -> JSONResponse:
        error = OpenAIError(408, f"The request body stalled: {exc}.", code="request_timeout")
        return JSONResponse(error.body(), status_code=408)

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


def server_config(app: FastAPI, args: argparse.Namespace, port: int, http_protocol: type | None = None,
                  **overrides) -> "uvicorn.Config":
    """uvicorn's configuration for these server flags (connection limit, header deadline, shutdown grace); the
    test server uses it too, so tests run what production runs."""
    import uvicorn

    settings = dict(host=args.host, port=port, log_level=args.log_level, timeout_graceful_shutdown=args.shutdown_timeout,
                    limit_concurrency=args.max_connections,
                    http=http_protocol or header_deadline_protocol(args.header_read_timeout))
    return uvicorn.Config(app, **{**settings, **overrides})


def run_server(args: argparse.Namespace, sock: socket.socket | None = None) -> None:
    """Serve until SIGTERM / SIGINT on `sock` (bound to --host/--port here when not given). Bad options, a model
    that cannot load or a busy port raise UsageError before anything is served."""
    import uvicorn

    check_ray_flags(args)
    if args.ray:  # replicas of this app on Ray Serve (entrypoints/ray_serve/)
        from vllm_whisper.entrypoints.ray_serve.launch import run_ray_server

        if sock is not None:
            sock.close()  # Serve's proxy binds --host/--port itself
        return run_ray_server(args)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = sock if sock is not None else bind_server_socket(args.host, args.port)
    try:
        origins = parse_origins(args.allowed_origins)
        http_protocol = header_deadline_protocol(args.header_read_timeout)
        state = create_state(args)
    except ValueError as exc:  # a bad option, a model that cannot load, no GPU for --device cuda, ...
        sock.close()
        raise UsageError(str(exc)) from exc
    except BaseException:
        sock.close()
        raise
    app = build_app(state, origins)
    host, port = sock.getsockname()[:2]
    for entry in state.registry.entries:
        if entry.runtime is not None:
            logger.info("%s", startup_line(entry.runtime.setup, list(entry.spec.served_names), host, port, entry.index))
        else:
            logger.info("Engine %03d (%s): loads on its first request", entry.index, entry.spec.name)
    config = server_config(app, args, port, http_protocol)
    try:
        run_draining(config, state.drain, sockets=[sock])
    finally:
        state.registry.shutdown()


def main(argv: list[str] | None = None) -> None:
    from vllm_whisper.entrypoints.cli import serve_main

    sys.exit(serve_main(sys.argv[1:] if argv is None else argv))
