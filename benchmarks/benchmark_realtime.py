"""Realtime transcription latency: synthetic utterances streamed over /v1/realtime in 100 ms PCM16 chunks at
real-time pace, with server VAD and with client commits.

Measured per utterance: first delta after the start of speech, completed transcript after the commit (the
client's, or the server VAD's `committed` event) and after the end of speech. The peer row is what a
non-streaming system gives: faster-whisper transcribing the utterance once it is over (its latency counts from
the end of speech), on the same CTranslate2 weights in this process.

    python benchmarks/benchmark_realtime.py --utterances 5 --json realtime.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description  # noqa: E402

from vllm_whisper.engine_args import EngineArgs  # noqa: E402


def utterances(folder: Path, count: int, sentences: int) -> list[tuple[np.ndarray, tuple[float, float], str]]:
    """Padded speech (1 s before, 1.5 s after) with its (start, end) seconds and text."""
    from vllm_whisper.audio.decode import load_audio
    from vllm_whisper.testing.speech import HARVARD_SENTENCES, synthesize
    from vllm_whisper.testing.timeline import speech_bounds

    out = []
    for i in range(count):
        text = " ".join(HARVARD_SENTENCES[(i * sentences + k) % len(HARVARD_SENTENCES)] for k in range(sentences))
        clip = load_audio(synthesize(text, folder / f"rt{i}.wav", "flite", ("slt", "awb", "rms")[i % 3]).path)
        start, end = speech_bounds(clip)
        clip = clip[start:end]
        audio = np.concatenate([np.zeros(16000, np.float32), clip, np.zeros(24000, np.float32)])
        out.append((audio, (1.0, 1.0 + clip.size / 16000), text))
    return out


async def run_ours(url: str, items, manual_commit: bool) -> list[dict]:
    from vllm_whisper.testing.realtime_client import stream_audio

    session = None
    if manual_commit:
        session = {"type": "transcription", "audio": {"input": {"turn_detection": None}}}
    rows = []
    for audio, speech, text in items:
        if manual_commit:  # commit right after the last speech chunk
            audio = audio[: int(speech[1] * 16000) + 1600]
        run = await stream_audio(url, audio, speech, session=session, commit=manual_commit)
        deltas = run.of_type("conversation.item.input_audio_transcription.delta")
        completed = run.of_type("conversation.item.input_audio_transcription.completed")
        committed = run.of_type("input_audio_buffer.committed")
        if not completed:
            rows.append({"error": "no completed transcript"})
            continue
        commit_at = run.commit_sent if manual_commit else committed[0].at
        rows.append({
            "audio_s": speech[1] - speech[0],
            "first_delta_after_speech_start_s": (deltas[0].at - run.speech_start) if deltas else None,
            "completed_after_commit_s": completed[0].at - commit_at,
            "completed_after_speech_end_s": completed[0].at - run.speech_end,
            "deltas": len(deltas), "transcript": run.transcripts[0], "reference": text,
        })
    return rows


def run_faster_whisper(model: str, items) -> list[dict] | None:
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        return None
    from vllm_whisper.model_executor.aliases import OFFLINE_ALIASES, resolve_alias

    directory = str(resolve_alias(model) if model in OFFLINE_ALIASES else model)
    fw = WhisperModel(directory, device="cpu", compute_type="int8", cpu_threads=2)
    options = dict(beam_size=1, language="en", vad_filter=False, without_timestamps=True)
    list(fw.transcribe(items[0][0], **options)[0])  # warm-up
    rows = []
    for audio, speech, text in items:
        utterance = audio[: int(speech[1] * 16000)]
        start = time.perf_counter()
        segments, _ = fw.transcribe(utterance, **options)
        transcript = "".join(s.text for s in segments).strip()
        elapsed = time.perf_counter() - start
        rows.append({"audio_s": speech[1] - speech[0], "first_delta_after_speech_start_s": None,
                     "completed_after_commit_s": elapsed, "completed_after_speech_end_s": elapsed,
                     "deltas": 0, "transcript": transcript, "reference": text})
    return rows


def summary(system: str, rows: list[dict]) -> dict:
    from vllm_whisper.testing.speech import word_error_rate

    good = [r for r in rows if "error" not in r]

    def mean(key: str) -> float | None:
        values = [r[key] for r in good if r[key] is not None]
        return statistics.fmean(values) if values else None

    def worst(key: str) -> float | None:
        values = [r[key] for r in good if r[key] is not None]
        return max(values) if values else None

    return {"system": system, "utterances": len(rows), "failed": len(rows) - len(good),
            "first_delta_mean_s": mean("first_delta_after_speech_start_s"),
            "first_delta_max_s": worst("first_delta_after_speech_start_s"),
            "completed_after_commit_mean_s": mean("completed_after_commit_s"),
            "completed_after_commit_max_s": worst("completed_after_commit_s"),
            "completed_after_speech_end_mean_s": mean("completed_after_speech_end_s"),
            "wer": word_error_rate([r["reference"] for r in good], [r["transcript"] for r in good]) if good else None,
            "rows": rows}


def print_table(results: list[dict]) -> None:
    print("\nRealtime transcription (5 s-class utterances, 100 ms chunks at real-time pace)")
    print(f"Machine: {machine_description()}")
    print(f"{'system':<44} {'first delta':>11} {'(max)':>6} {'done-commit':>11} {'(max)':>6} {'done-end':>8} {'WER':>6}")

    def f(value):
        return "-" if value is None else f"{value:.2f}"

    for r in results:
        print(f"{r['system']:<44} {f(r['first_delta_mean_s']):>11} {f(r['first_delta_max_s']):>6} "
              f"{f(r['completed_after_commit_mean_s']):>11} {f(r['completed_after_commit_max_s']):>6} "
              f"{f(r['completed_after_speech_end_mean_s']):>8} {f(r['wer']):>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=None, help="a running server (default: start ours in-process)")
    EngineArgs.add_cli_args(parser)  # our in-process server's engine flags (--model also names the model sent)
    parser.set_defaults(dtype="float32")
    parser.add_argument("--utterances", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=2, help="sentences per utterance (2 gives about 5 s)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        items = utterances(Path(tmp), args.utterances, args.sentences)
        if args.base_url:
            results = _measure(args.base_url, items, args.model)
        else:
            from vllm_whisper.testing.server import serve_in_thread

            with serve_in_thread(*EngineArgs.from_cli_args(args).to_cli_args()) as server:
                results = _measure(server.base_url, items, args.model)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
                                         "options": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=2))


def _measure(base_url: str, items, model: str) -> list[dict]:
    url = base_url.replace("http://", "ws://").replace("https://", "wss://") + "/v1/realtime?intent=transcription"
    results = [summary("vllm-whisper realtime, server VAD", asyncio.run(run_ours(url, items, False))),
               summary("vllm-whisper realtime, client commit", asyncio.run(run_ours(url, items, True)))]
    peer = run_faster_whisper(model, items)
    if peer is not None:
        results.append(summary("faster-whisper int8, whole utterance at end", peer))
    return results


if __name__ == "__main__":
    main()
