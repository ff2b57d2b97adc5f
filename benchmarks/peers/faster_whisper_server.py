"""The serving peer: faster-whisper behind a minimal OpenAI-style endpoint, the way people wrap it today.

POST /v1/audio/transcriptions (json, or stream=true with one transcript.text.delta per segment) and /health.
Requests run one at a time on the model (one CPU model call already uses every thread); concurrency beyond that
queues, which is what batching in our engine is meant to beat.

    python benchmarks/peers/faster_whisper_server.py --model-dir DIR --port 8001 --compute-type int8
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import threading

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse


def build_app(model_dir: str, compute_type: str, threads: int) -> FastAPI:
    from faster_whisper import WhisperModel
    from faster_whisper.audio import decode_audio

    model = WhisperModel(model_dir, device="cpu", compute_type=compute_type, cpu_threads=threads)
    lock = threading.Lock()
    app = FastAPI()
    options = dict(beam_size=1, language="en", condition_on_previous_text=False, vad_filter=False, temperature=0.0)

    def produce(data: bytes, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        """Run faster-whisper's lazy segment generator, handing each segment to the event loop as it is made."""
        try:
            with lock:
                audio = decode_audio(io.BytesIO(data))
                segments, _ = model.transcribe(audio, **options)
                for segment in segments:
                    loop.call_soon_threadsafe(queue.put_nowait, segment.text)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    async def segment_texts(data: bytes):
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        worker = loop.run_in_executor(None, produce, data, loop, queue)
        while (text := await queue.get()) is not None:
            yield text
        await worker

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return JSONResponse({"error": {"message": "file is missing", "type": "invalid_request_error",
                                           "param": "file", "code": None}}, status_code=400)
        data = await upload.read()
        if form.get("stream") != "true":
            texts = [t async for t in segment_texts(data)]
            return JSONResponse({"text": "".join(texts).strip()})

        async def events():
            texts = []
            async for piece in segment_texts(data):
                texts.append(piece)
                yield f"data: {json.dumps({'type': 'transcript.text.delta', 'delta': piece})}\n\n"
            yield f"data: {json.dumps({'type': 'transcript.text.done', 'text': ''.join(texts).strip()})}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a CTranslate2 Whisper directory")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    uvicorn.run(build_app(args.model_dir, args.compute_type, args.threads), host="127.0.0.1", port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()
