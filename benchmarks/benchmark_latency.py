"""One request's latency, stage by stage: vllm-whisper next to Hugging Face transformers and faster-whisper,
same file, same weights, greedy decoding with timestamps, one request at a time.

Stages, each timed on every repeat after the warm-up rounds (mean / p50 / p90 reported):
  audio decode       file bytes -> 16 kHz mono samples (ours and faster-whisper: PyAV)
  log-mel features   samples -> one (n_mels, 3000) window (ours, WhisperFeatureExtractor, faster-whisper's)
  encoder            one window through the encoder alone (our model.encode, transformers' model.model.encoder,
                     faster-whisper's WhisperModel.encode), timed apart from the request
  first step         ours: the engine's first step() (encoder, cross K/V, prompt, first token);
                     transformers: generate() start to its first new token (same work)
  time to first token   file bytes -> first sampled token (decode + features + first step)
  per-token decode   mean time of each later decoder step (one token each; the last one samples end-of-text)
  total              file bytes -> last token (faster-whisper: transcribe() on the path, segments consumed)
The systems take turns, one request and one encoder run each per round, so load from elsewhere on a shared machine
falls on all of them alike; read p50 where mean and p90 disagree. Files longer than 30 s are cut to their first
window, so every system does the same one-window request. transformers reads the audio with our PyAV decoder
(it has none of its own); its total includes that.

    python benchmarks/benchmark_latency.py                       # full run: 8-sentence paragraph, 10 repeats
    python benchmarks/benchmark_latency.py --audio talk.mp3 --output-json latency.json
    python benchmarks/benchmark_latency.py --quick               # smoke test: short clip, 2 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from common import machine_description, progress

from vllm_whisper.engine_args import EngineArgs

STAGES: dict[str, str] = {
    "audio_decode": "audio decode (PyAV)",
    "features": "log-mel features",
    "encoder": "encoder (one window)",
    "first_step": "first step (encode + prompt + 1st token)",
    "ttft": "time to first token",
    "per_token": "per-token decode",
    "total": "total",
}
SAMPLE_RATE = 16000
WINDOW_SAMPLES = 30 * SAMPLE_RATE


@dataclass
class SystemRun:
    """One system's per-repeat samples of each stage (seconds) and what it transcribed."""

    system: str
    samples: dict[str, list[float]] = field(default_factory=dict)
    tokens: int = 0
    text: str = ""

    def add(self, stage: str, seconds: float) -> None:
        if stage not in STAGES:
            raise KeyError(f"unknown stage {stage!r}")
        self.samples.setdefault(stage, []).append(seconds)

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean, median and 90th percentile of each timed stage, in milliseconds."""
        return {stage: summarize(values) for stage, values in self.samples.items()}

    def to_json(self) -> dict:
        return {"system": self.system, "tokens": self.tokens, "text": self.text, "stages": self.summary()}


def summarize(seconds: list[float]) -> dict[str, float]:
    """Mean, median and 90th percentile in milliseconds, and the sample count."""
    ms = np.asarray(seconds) * 1000.0
    return {"mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "n": len(ms)}


class Clock:
    """perf_counter that first waits for queued GPU work, so a stage's time includes its kernels."""

    def __init__(self, device: str):
        self.cuda = torch.device(device).type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


# --- the systems: each runs one timed request, and its encoder alone ------------------------------
@dataclass
class Sample:
    """One timed request: seconds per stage, tokens sampled (without end-of-text) and the text."""

    times: dict[str, float]
    tokens: int
    text: str


class System(Protocol):
    name: str

    def request(self) -> Sample: ...

    def encode(self) -> None: ...


class Ours:
    """vllm-whisper, stepping the engine by hand: the first step encodes the window and samples the first token,
    every later step samples one token."""

    name = "vllm-whisper"

    def __init__(self, args: argparse.Namespace, path: Path):
        from vllm_whisper.engine.sampler import SamplingParams
        from vllm_whisper.params import TranscriptionParams
        from vllm_whisper.transcribe.sequential import build_rules

        self.path, self.clock = path, Clock(args.device)
        engine_args = EngineArgs.from_cli_args(args)
        self.loaded = engine_args.load_model()
        self.engine = engine_args.create_engine(self.loaded)
        language = args.language if self.loaded.tokenizer.is_multilingual else "en"
        params = TranscriptionParams(language=language, max_new_tokens=self.engine.config.default_max_new_tokens)
        self.prompt = self.loaded.model.get_decoder_prompt(params.language, params.task, params.timestamps)
        self.sampling = SamplingParams(build_rules(self.loaded, params), max_new_tokens=params.max_new_tokens,
                                       no_speech_index=self.prompt.index(self.loaded.tokenizer.sot))
        self.features: torch.Tensor | None = None
        self.count = 0

    def request(self) -> Sample:
        from vllm_whisper.audio import N_FRAMES, N_SAMPLES, load_audio, log_mel_spectrogram

        clock, engine = self.clock, self.engine
        self.count += 1
        t0 = clock()
        audio = load_audio(self.path)[:N_SAMPLES]
        t1 = clock()
        features = log_mel_spectrogram(audio, self.loaded.config.num_mel_bins, padding=N_SAMPLES)[:, :N_FRAMES]
        self.features = features.contiguous()
        t2 = clock()
        engine.add_request(f"latency-{self.count}", self.features, self.prompt, self.sampling,
                           audio_seconds=len(audio) / SAMPLE_RATE)
        outputs = engine.step()
        t3 = clock()
        steps: list[float] = []
        while engine.has_unfinished_requests():
            start = clock()
            outputs += engine.step()
            steps.append(clock() - start)
        t4 = clock()
        final = next(out for out in outputs if out.finished)
        times = {"audio_decode": t1 - t0, "features": t2 - t1, "first_step": t3 - t2, "ttft": t3 - t0,
                 "total": t4 - t0}
        if steps:
            times["per_token"] = statistics.fmean(steps)
        return Sample(times, len(final.tokens), self.loaded.tokenizer.decode(final.tokens).strip())

    def encode(self) -> None:
        model = self.loaded.model
        model.encode(self.features.unsqueeze(0).to(model.device))


class TokenClock:
    """A generate() streamer that notes when each new token arrives (its first put is the prompt); put() gets
    tokens already copied to the CPU, so no extra GPU synchronisation is needed."""

    def __init__(self):
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class Transformers:
    """Hugging Face transformers on the same weights: WhisperFeatureExtractor, then generate(); a streamer clocks
    each token. It reads the file with our PyAV decoder (it has none of its own)."""

    name = "transformers"

    def __init__(self, args: argparse.Namespace, hf_dir: Path, path: Path):
        import transformers
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

        from vllm_whisper.model_executor.loader import resolve_dtype
        from vllm_whisper.tokenizer import load_tokenizer

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.path, self.clock, self.device = path, Clock(args.device), args.device
        self.dtype = resolve_dtype(args.dtype, args.device)
        self.model = WhisperForConditionalGeneration.from_pretrained(hf_dir, dtype=self.dtype)
        self.model = self.model.to(args.device).eval()
        self.extractor = WhisperFeatureExtractor(feature_size=self.model.config.num_mel_bins)
        self.tokenizer = load_tokenizer(hf_dir, self.model.config.vocab_size)
        self.language = {"language": args.language} if self.tokenizer.is_multilingual else {}
        self.features: torch.Tensor | None = None

    def request(self) -> Sample:
        from vllm_whisper.audio import N_SAMPLES, load_audio

        clock, streamer, tok = self.clock, TokenClock(), self.tokenizer
        t0 = clock()
        audio = load_audio(self.path)[:N_SAMPLES]
        t1 = clock()
        features = self.extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        self.features = features.to(self.device, self.dtype)
        t2 = clock()
        with torch.inference_mode():
            ids = self.model.generate(self.features, return_timestamps=True, max_new_tokens=224, streamer=streamer,
                                      **self.language)
        t3 = clock()
        times = {"features": t2 - t1, "total": t3 - t0}
        if streamer.times:
            times["first_step"] = streamer.times[0] - t2
            times["ttft"] = streamer.times[0] - t0
        if len(streamer.times) > 1:
            times["per_token"] = float(np.diff(streamer.times).mean())
        tokens = [t for t in ids[0].tolist() if t < tok.eot or tok.is_timestamp(t)]
        return Sample(times, len(tokens), tok.decode(tokens).strip())

    def encode(self) -> None:
        self.model.model.encoder(self.features)


class FasterWhisper:
    """faster-whisper (CTranslate2) on the same weights: transcribe() for the total, and its own decode_audio
    and feature extractor timed on their own right after. decode_audio ends with gc.collect(), which is most of
    its decode time in a process that holds three models."""

    name = "faster-whisper"

    def __init__(self, args: argparse.Namespace, path: Path):
        from faster_whisper import WhisperModel

        from vllm_whisper.model_executor.aliases import OFFLINE_ALIASES, resolve_alias

        directory = str(resolve_alias(args.model) if args.model in OFFLINE_ALIASES else args.model)
        compute_type = args.quantization or ("default" if args.dtype == "auto" else args.dtype)
        self.model = WhisperModel(directory, device=torch.device(args.device).type, compute_type=compute_type,
                                  cpu_threads=torch.get_num_threads())
        self.options = dict(beam_size=1, language=args.language, condition_on_previous_text=False,
                            vad_filter=False, temperature=0.0, without_timestamps=False)
        self.path, self.clock = path, Clock(args.device)
        self.features: np.ndarray | None = None

    def request(self) -> Sample:
        from faster_whisper import decode_audio
        from faster_whisper.audio import pad_or_trim

        clock = self.clock
        t0 = clock()
        segments, _ = self.model.transcribe(str(self.path), **self.options)
        segments = list(segments)
        t1 = clock()
        audio = decode_audio(str(self.path))[:WINDOW_SAMPLES]
        t2 = clock()
        self.features = pad_or_trim(self.model.feature_extractor(audio)[:, :3000])
        t3 = clock()
        times = {"total": t1 - t0, "audio_decode": t2 - t1, "features": t3 - t2}
        return Sample(times, sum(len(s.tokens) for s in segments), "".join(s.text for s in segments).strip())

    def encode(self) -> None:
        self.model.encode(self.features)


def faster_whisper_installed() -> bool:
    try:
        import faster_whisper  # noqa: F401
    except ImportError:
        return False
    return True


def measure(systems: list[System], args: argparse.Namespace) -> list[SystemRun]:
    """Round-robin the systems, each doing one request then one encoder run per round, so that load from
    elsewhere on a shared machine falls on all of them alike; the first `warmup` rounds are not kept."""
    runs = [SystemRun(system.name) for system in systems]
    clock = Clock(args.device)
    for round_index in progress(range(args.warmup + args.repeats), desc="rounds"):
        for system, run in zip(systems, runs):
            sample = system.request()
            with torch.inference_mode():
                start = clock()
                system.encode()
                encoder_seconds = clock() - start
            if round_index >= args.warmup:
                for stage, seconds in {**sample.times, "encoder": encoder_seconds}.items():
                    run.add(stage, seconds)
                run.tokens, run.text = sample.tokens, sample.text
    return runs


# --- audio, report, main --------------------------------------------------------------------------
def prepare_audio(args: argparse.Namespace, folder: Path) -> tuple[Path, float, str]:
    """The request's file (cut to 30 s when longer), its duration and a description."""
    from vllm_whisper.audio import load_audio
    from vllm_whisper.testing.encode import encode_audio
    from vllm_whisper.testing.speech import paragraph_corpus

    if args.audio is not None:
        path, label = Path(args.audio), str(args.audio)
    else:
        clip = paragraph_corpus(folder / "clips", 1, args.sentences)[0]
        path, label = clip.path, f"synthetic paragraph of {args.sentences} Harvard sentences ({clip.engine})"
    audio = load_audio(path)
    if len(audio) > WINDOW_SAMPLES:
        path = encode_audio(audio[:WINDOW_SAMPLES], SAMPLE_RATE, folder / "first_window.wav")
        label += ", first 30 s"
        audio = audio[:WINDOW_SAMPLES]
    return path, len(audio) / SAMPLE_RATE, label


def cell(run: SystemRun, stage: str) -> str:
    if stage not in run.samples:
        return "–"
    s = summarize(run.samples[stage])
    return f"{s['mean_ms']:.1f} / {s['p50_ms']:.1f} / {s['p90_ms']:.1f}"


def markdown_table(runs: list[SystemRun]) -> str:
    """Stages down, systems across; each cell is mean / p50 / p90 in ms."""
    header = "| stage | " + " | ".join(f"{r.system} mean / p50 / p90 ms" for r in runs) + " |"
    rule = "| --- |" + " ---: |" * len(runs)
    rows = [f"| {label} | " + " | ".join(cell(r, stage) for r in runs) + " |" for stage, label in STAGES.items()]
    tokens = "| tokens generated | " + " | ".join(str(r.tokens) for r in runs) + " |"
    return "\n".join([header, rule, *rows, tokens])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Our engine's flags; --model, --dtype and --device apply to all systems, --quantization int8 to ours and
    # faster-whisper (transformers stays in --dtype).
    EngineArgs.add_cli_args(parser)
    parser.set_defaults(dtype="float32")
    parser.add_argument("--language", default="en", help="spoken language (multilingual models)")
    parser.add_argument("--audio", type=Path, default=None, help="audio file; default: a synthetic paragraph")
    parser.add_argument("--sentences", type=int, default=8, help="sentences in the synthetic paragraph")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per system after the warm-up")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per system first")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 sentence, 1 warm-up, 2 repeats")
    parser.add_argument("--output-json", "--json", dest="output_json", type=Path, default=None)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--skip-faster-whisper", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.device = EngineArgs.from_cli_args(args).resolved_device  # the peers run on the same device
    except ValueError as exc:
        parser.error(str(exc))
    if args.quick:
        args.sentences, args.warmup, args.repeats = 1, 1, 2
    if args.repeats < 1 or args.warmup < 0 or args.sentences < 1:
        parser.error("--repeats and --sentences must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from vllm_whisper.model_executor.export import export_hf
    from vllm_whisper.model_executor.loader import load_model

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        path, audio_seconds, label = prepare_audio(args, Path(tmp))
        systems: list[System] = [Ours(args, path)]
        if not args.skip_transformers:
            hf_dir = export_hf(load_model(args.model, dtype="float32"), Path(tmp) / "hf")
            systems.append(Transformers(args, hf_dir, path))
        if not args.skip_faster_whisper:
            if faster_whisper_installed():
                systems.append(FasterWhisper(args, path))
            else:
                print("faster-whisper is not installed: pip install faster-whisper")
        runs = measure(systems, args)
    machine = machine_description()
    precision = f"{args.dtype}, int8 weights for ours and faster-whisper" if args.quantization else args.dtype
    print(f"\nLatency of one request, {args.model} ({precision}, {args.device}), {audio_seconds:.1f} s of audio: "
          f"{label}; {args.repeats} repeats after {args.warmup} warm-up")
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(f"Machine: {machine}; 1-minute load average {load[0]} before, {load[1]} after\n")
    print(markdown_table(runs))
    if args.output_json:
        args.output_json.write_text(json.dumps({
            "benchmark": "latency", "model": args.model, "dtype": args.dtype, "quantization": args.quantization,
            "device": args.device,
            "audio": label, "audio_seconds": audio_seconds, "repeats": args.repeats, "warmup": args.warmup,
            "machine": machine, "load_average": load, "date": time.strftime("%Y-%m-%d"),
            "results": [r.to_json() for r in runs],
        }, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
