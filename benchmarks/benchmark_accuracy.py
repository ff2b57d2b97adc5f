"""Accuracy on synthetic speech with a known transcript and timeline: vllm-whisper next to Hugging Face transformers
faster-whisper and whisper.cpp, same tiny.en weights, same audio (16 kHz arrays handed to every system), greedy decoding.

WER: Harvard sentences spoken by flite (slt, awb, rms, kal16), festival and espeak-ng, clean and in variants made
with numpy and sox (white noise at --snr-db, speed 0.9x / 1.1x, reverb); corpus WER per variant and overall, after
vllm_whisper.testing.speech.normalize_text (lower case, no punctuation, a few numbers as words).

Timestamps: one long file from build_timeline (sentences joined by known silences). For every segment start, the
distance to the nearest true sentence start: mean absolute error and the share within 0.5 s; also the share of
sentences that some segment starts within 0.5 s of (so one long segment cannot score well) and the file's WER.

Every system: English, greedy (temperature 0 only, no fallback), timestamps on, no conditioning on previous text,
no VAD; transformers fp32 on the weights exported with export_hf; faster-whisper on the CTranslate2 directory;
whisper.cpp (pywhispercpp) on the checkpoint converted to ggml by peers/convert_to_ggml.py.

    python benchmarks/benchmark_accuracy.py --json accuracy.json      # full: 30 sentences x 5 variants
    python benchmarks/benchmark_accuracy.py --quick --json out.json   # smoke test (tests/test_benchmark_accuracy.py)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from common import machine_description, progress

from vllm_whisper.engine_args import EngineArgs

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

SAMPLE_RATE = 16000
TOLERANCE_S = 0.5
TIMELINE_GAPS = (0.7, 1.3, 0.9, 1.6, 1.1)
TIMELINE_VOICES = ("slt", "awb", "rms")
VARIANTS = ("clean", "noise", "speed0.9", "speed1.1", "reverb")
QUICK_VARIANTS = ("clean", "noise")


# --- data crossing functions -----------------------------------------------------------------------
@dataclass(frozen=True)
class Clip:
    """One test utterance: 16 kHz samples and the text spoken."""

    audio: np.ndarray
    text: str
    variant: str
    speaker: str


@dataclass
class Transcript:
    """What a system returned for one input: the text and its segment start times in seconds."""

    text: str
    starts: list[float] = field(default_factory=list)


@dataclass
class WerRow:
    system: str
    overall: float
    per_variant: dict[str, float]
    hypotheses: list[str]


@dataclass
class TimestampRow:
    system: str
    segments: int
    start_mae_s: float | None  # mean distance from each segment start to the nearest true sentence start
    starts_within: float  # share of segment starts within TOLERANCE_S of a true start
    sentences_hit: float  # share of true sentence starts within TOLERANCE_S of a segment start
    wer: float
    starts: list[float]


class System(Protocol):
    """A transcriber; `words` systems time every word and snap segment starts to the first word."""

    name: str

    def transcribe(self, audios: list[np.ndarray], word_timestamps: bool = False) -> list[Transcript]: ...


def batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


# --- audio -------------------------------------------------------------------------------------------
def run_sox(source: Path, target: Path, effect: Sequence[str]) -> None:
    """sox `source` to a 16 kHz mono WAV `target` through `effect` (-G guards against clipping)."""
    sox = shutil.which("sox")
    if sox is None:
        raise RuntimeError("sox is not installed: apt-get install sox")
    command = [sox, "-G", str(source), "-r", str(SAMPLE_RATE), "-c", "1", str(target), *effect]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not target.is_file():
        raise RuntimeError(f"sox {' '.join(effect)} failed on {source.name}: {done.stderr.strip()[:300]}")


def add_noise(audio: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """White Gaussian noise at `snr_db` below the power of the speech span (silences excluded)."""
    from vllm_whisper.testing.timeline import speech_bounds

    start, end = speech_bounds(audio)
    power = float(np.mean(audio[start:end] ** 2)) if end > start else float(np.mean(audio ** 2))
    noise = np.random.default_rng(seed).standard_normal(len(audio)) * np.sqrt(power / 10 ** (snr_db / 10))
    mixed = (audio + noise).astype(np.float32)
    peak = float(np.abs(mixed).max())
    return mixed / peak * 0.99 if peak > 0.99 else mixed


SOX_EFFECTS: dict[str, list[str]] = {"speed0.9": ["speed", "0.9"], "speed1.1": ["speed", "1.1"],
                                     "reverb": ["reverb", "50"]}


def make_variant(name: str, clean: np.ndarray, clean_path: Path, folder: Path, snr_db: float, seed: int) -> np.ndarray:
    """The clean clip (16 kHz) turned into variant `name`."""
    from vllm_whisper.audio import load_audio

    if name == "clean":
        return clean
    if name == "noise":
        return add_noise(clean, snr_db, seed)
    if name not in SOX_EFFECTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    target = folder / f"{clean_path.stem}_{name}.wav"
    run_sox(clean_path, target, SOX_EFFECTS[name])
    return load_audio(target)


def make_clips(folder: Path, sentences: int, variants: Sequence[str], snr_db: float) -> list[Clip]:
    """`sentences` Harvard sentences across all speakers, each in every variant (variant-major order)."""
    from vllm_whisper.audio import load_audio
    from vllm_whisper.testing.encode import encode_audio
    from vllm_whisper.testing.speech import english_corpus

    utterances = english_corpus(folder / "tts", sentences)
    clean = []
    for i, u in enumerate(progress(utterances, desc="16 kHz clean clips")):
        audio = load_audio(u.path)
        clean.append((audio, encode_audio(audio, SAMPLE_RATE, folder / f"clean{i:03d}.wav")))
    clips = []
    for variant in variants:
        for i, (u, (audio, path)) in enumerate(progress(list(zip(utterances, clean)), desc=f"variant {variant}")):
            clips.append(Clip(make_variant(variant, audio, path, folder, snr_db, seed=i), u.text, variant,
                              f"{u.engine}/{u.voice}"))
    return clips


# --- systems ----------------------------------------------------------------------------------------
class Ours:
    """vllm-whisper's offline LLM API; clips go to the engine in batches (windows share steps)."""

    def __init__(self, engine_args: EngineArgs, batch_size: int = 16, compared: bool = False):
        from vllm_whisper import LLM

        self.name, self.llm, self.batch_size = "vllm-whisper", LLM(engine_args=engine_args), batch_size
        if compared:  # a second configuration in the same run: name what it resolved to
            model = self.llm.engine.loaded.model
            precision = model.quantization or str(model.dtype).removeprefix("torch.")
            kv = str(self.llm.engine.cross_cache_dtype).removeprefix("torch.")
            self.name += f" ({precision}, {kv} cross K/V, audio-context {engine_args.audio_context})"

    def transcribe(self, audios: list[np.ndarray], word_timestamps: bool = False) -> list[Transcript]:
        from vllm_whisper import TranscriptionParams

        params = TranscriptionParams(language="en", temperature=(0.0,), condition_on_previous_text=False,
                                     word_timestamps=word_timestamps)
        out = []
        for batch in progress(batches(audios, self.batch_size), desc=self.name):
            results = self.llm.transcribe(batch, params)
            out += [Transcript(r.text.strip(), [s.start for s in r.segments]) for r in results]
        return out


class Transformers:
    """WhisperForConditionalGeneration.generate(return_timestamps=True, return_segments=True), fp32, greedy; files
    over 30 s use its sequential long-form decoding."""

    def __init__(self, model: str, folder: Path, batch_size: int = 8):
        import transformers
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

        from vllm_whisper.model_executor.export import export_hf
        from vllm_whisper.model_executor.loader import load_model
        from vllm_whisper.tokenizer import load_tokenizer

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        hf_dir = export_hf(load_model(model, dtype="float32"), folder / "hf")
        self.name, self.batch_size = "transformers (fp32)", batch_size
        self.model = WhisperForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
        self.extractor = WhisperFeatureExtractor(feature_size=self.model.config.num_mel_bins)
        self.tokenizer = load_tokenizer(hf_dir, self.model.config.vocab_size)

    def transcribe(self, audios: list[np.ndarray], word_timestamps: bool = False) -> list[Transcript]:
        if word_timestamps:
            raise ValueError("the transformers row has no word-timestamp mode here")
        out = []
        for batch in progress(batches(audios, self.batch_size), desc=self.name):
            long = any(len(a) > 30 * SAMPLE_RATE for a in batch)
            if long and len(batch) > 1:
                out += [t for a in batch for t in self.transcribe([a])]
                continue
            extra = dict(truncation=False, padding="longest", return_attention_mask=True) if long else {}
            inputs = self.extractor(batch, sampling_rate=SAMPLE_RATE, return_tensors="pt", **extra)
            with torch.inference_mode():
                result = self.model.generate(**inputs, return_timestamps=True, return_segments=True,
                                             condition_on_prev_tokens=False)
            out += [self._transcript(segments) for segments in result["segments"]]
        return out

    def _transcript(self, segments: list[dict]) -> Transcript:
        eot = self.tokenizer.eot
        tokens = [t for s in segments for t in s["tokens"].tolist() if t < eot]
        return Transcript(self.tokenizer.decode(tokens).strip(), [float(s["start"]) for s in segments])


class FasterWhisper:
    """faster-whisper WhisperModel.transcribe on each array: beam 1, temperature 0, English, no VAD."""

    def __init__(self, model: str, compute_type: str):
        from faster_whisper import WhisperModel

        from vllm_whisper.model_executor.aliases import OFFLINE_ALIASES, resolve_alias

        directory = str(resolve_alias(model) if model in OFFLINE_ALIASES else model)
        self.name = f"faster-whisper ({compute_type})"
        self.model = WhisperModel(directory, device="cpu", compute_type=compute_type,
                                  cpu_threads=torch.get_num_threads())

    def transcribe(self, audios: list[np.ndarray], word_timestamps: bool = False) -> list[Transcript]:
        options = dict(beam_size=1, language="en", condition_on_previous_text=False, vad_filter=False,
                       temperature=0.0, without_timestamps=False, word_timestamps=word_timestamps)
        out = []
        for audio in progress(audios, desc=self.name):
            segments = list(self.model.transcribe(audio, **options)[0])
            out.append(Transcript("".join(s.text for s in segments).strip(), [s.start for s in segments]))
        return out


class WhisperCpp:
    """whisper.cpp (pywhispercpp) on each array: greedy, temperature 0, English, no context; our checkpoint
    converted to ggml by peers/convert_to_ggml.py. It has no word-timestamp mode here."""

    def __init__(self, model: str, ggml_type: str, cache_dir: Path | None):
        from convert_to_ggml import cached_model
        from whisper_cpp import load_whisper_cpp, require_pywhispercpp

        require_pywhispercpp()  # before converting anything
        self.name = f"whisper.cpp ({ggml_type})"
        self.model = load_whisper_cpp(cached_model(model, ggml_type, cache_dir), torch.get_num_threads())

    def transcribe(self, audios: list[np.ndarray], word_timestamps: bool = False) -> list[Transcript]:
        from whisper_cpp import transcribe_files

        if word_timestamps:
            raise ValueError("the whisper.cpp row has no word-timestamp mode here")
        run = transcribe_files(self.model, audios, True, lambda items: progress(items, desc=self.name))
        return [Transcript(text, starts) for text, starts in zip(run.texts, run.starts)]


def whisper_cpp_systems(args: argparse.Namespace) -> list[System]:
    """The whisper.cpp rows asked for; none (with the reason printed) when pywhispercpp is not usable."""
    from whisper_cpp import WhisperCppUnavailable

    try:
        return [WhisperCpp(args.model, t, args.ggml_cache) for t in args.whisper_cpp_types]
    except WhisperCppUnavailable as exc:
        print(f"whisper.cpp: skipped ({exc})")
        return []


def faster_whisper_installed() -> bool:
    try:
        import faster_whisper  # noqa: F401
    except ImportError:
        return False
    return True


def build_systems(args: argparse.Namespace, folder: Path) -> list[System]:
    systems: list[System] = [Ours(EngineArgs.from_cli_args(args))]
    if args.compare_audio_context:
        compared = dataclasses.replace(EngineArgs.from_cli_args(args), audio_context=args.compare_audio_context)
        systems.append(Ours(compared, compared=True))
    for kv_dtype in filter(None, (args.compare_kv_cache_dtype or "").split(",")):
        compared = dataclasses.replace(EngineArgs.from_cli_args(args), kv_cache_dtype=kv_dtype.strip())
        systems.append(Ours(compared, compared=True))
    if args.compare_defaults:
        systems.append(Ours(EngineArgs(model=args.model), compared=True))
    if not args.skip_transformers:
        systems.append(Transformers(args.model, folder))
    if not args.skip_faster_whisper:
        if faster_whisper_installed():
            systems += [FasterWhisper(args.model, c) for c in args.compute_types]
        else:
            print("faster-whisper is not installed: pip install faster-whisper")
    if not args.skip_whisper_cpp:
        systems += whisper_cpp_systems(args)
    return systems


# --- scoring ------------------------------------------------------------------------------------------
def score_wer(system: System, clips: list[Clip], variants: Sequence[str]) -> WerRow:
    """Corpus WER of `system` per variant and over all clips."""
    from vllm_whisper.testing.speech import word_error_rate

    hypotheses = [t.text for t in system.transcribe([c.audio for c in clips])]
    per_variant = {}
    for variant in variants:
        pairs = [(c.text, h) for c, h in zip(clips, hypotheses) if c.variant == variant]
        per_variant[variant] = word_error_rate([r for r, _ in pairs], [h for _, h in pairs])
    overall = word_error_rate([c.text for c in clips], hypotheses)
    return WerRow(system.name, overall, per_variant, hypotheses)


def start_errors(starts: Sequence[float], truth: Sequence[float]) -> list[float]:
    """For each predicted start, the distance in seconds to the nearest true start."""
    truth_array = np.asarray(truth, dtype=float)
    return [float(np.abs(truth_array - s).min()) for s in starts]


def score_timestamps(name: str, transcript: Transcript, truth: Sequence[float], text: str) -> TimestampRow:
    from vllm_whisper.testing.speech import word_error_rate
    from vllm_whisper.testing.timeline import fraction_within

    errors = start_errors(transcript.starts, truth)
    return TimestampRow(
        system=name, segments=len(transcript.starts), start_mae_s=float(np.mean(errors)) if errors else None,
        starts_within=fraction_within(transcript.starts, truth, TOLERANCE_S),
        sentences_hit=fraction_within(truth, transcript.starts, TOLERANCE_S) if transcript.starts else 0.0,
        wer=word_error_rate([text], [transcript.text]), starts=[round(s, 3) for s in transcript.starts])


def timestamp_rows(systems: list[System], audio: np.ndarray, truth: list[float], text: str) -> list[TimestampRow]:
    """Each system's segments on the long file; systems that time words get a second row with them on."""
    rows = []
    for system in systems:
        modes = (False,) if isinstance(system, (Transformers, WhisperCpp)) else (False, True)
        for words in modes:
            [transcript] = system.transcribe([audio], word_timestamps=words)
            label = f"{system.name}, word timestamps" if words else system.name
            rows.append(score_timestamps(label, transcript, truth, text))
    return rows


# --- report -------------------------------------------------------------------------------------------
def print_wer_table(rows: list[WerRow], variants: Sequence[str], title: str, machine: str) -> None:
    width = max(len(r.system) for r in rows) + 2
    print(f"\n{title}\nMachine: {machine}")
    print(f"{'system':<{width}}" + "".join(f"{v:>10}" for v in variants) + f"{'overall':>10}")
    for r in rows:
        print(f"{r.system:<{width}}" + "".join(f"{r.per_variant[v]:>10.4f}" for v in variants) + f"{r.overall:>10.4f}")


def print_timestamp_table(rows: list[TimestampRow], title: str, machine: str) -> None:
    width = max(len(r.system) for r in rows) + 2
    print(f"\n{title}\nMachine: {machine}")
    print(f"{'system':<{width}} {'segments':>8} {'start MAE s':>11} {'<=0.5 s':>8} {'sentences hit':>13} {'WER':>7}")
    for r in rows:
        mae = "-" if r.start_mae_s is None else f"{r.start_mae_s:.3f}"
        print(f"{r.system:<{width}} {r.segments:>8} {mae:>11} {r.starts_within:>8.3f} {r.sentences_hit:>13.3f} "
              f"{r.wer:>7.4f}")


def variant_descriptions(snr_db: float) -> dict[str, str]:
    return {"clean": "as synthesised, resampled to 16 kHz", "noise": f"white Gaussian noise at {snr_db:g} dB SNR",
            "speed0.9": "sox speed 0.9 (slower, lower pitch)", "speed1.1": "sox speed 1.1 (faster, higher pitch)",
            "reverb": "sox reverb 50"}


# --- main ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    EngineArgs.add_cli_args(parser)  # our engine's flags; --model also names the peers' weights
    parser.set_defaults(dtype="float32")  # next to transformers and faster-whisper's float32
    parser.add_argument("--sentences", type=int, default=30, help="Harvard sentences per variant (speakers rotate)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--snr-db", type=float, default=10.0, help="signal-to-noise ratio of the noise variant")
    parser.add_argument("--timeline-sentences", type=int, default=12, help="sentences in the long timestamp file")
    parser.add_argument("--compute-types", default="int8,float32", help="faster-whisper compute types")
    parser.add_argument("--whisper-cpp-types", default="q8_0,f16", help="whisper.cpp ggml types (q8_0, f16, f32)")
    parser.add_argument("--ggml-cache", type=Path, default=None,
                        help="where converted whisper.cpp models are kept (default ~/.cache/vllm_whisper/ggml)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 3 sentences, clean and noise, 4-sentence timeline, faster-whisper int8, "
                             "whisper.cpp q8_0")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--compare-audio-context", choices=("auto",), default=None,
                        help="also score our engine with this --audio-context, in the same invocation")
    parser.add_argument("--compare-kv-cache-dtype", default=None, metavar="DTYPES",
                        help="also score our engine with each of these comma-separated --kv-cache-dtype values")
    parser.add_argument("--compare-defaults", action="store_true",
                        help="also score our engine as a user gets it with no flags (--dtype auto and every default)")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--skip-faster-whisper", action="store_true")
    parser.add_argument("--skip-whisper-cpp", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.sentences, args.timeline_sentences = 3, 4
        args.variants, args.compute_types = ",".join(QUICK_VARIANTS), "int8"
        args.whisper_cpp_types = "q8_0"
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.compute_types = [c.strip() for c in args.compute_types.split(",") if c.strip()]
    args.whisper_cpp_types = [t.strip() for t in args.whisper_cpp_types.split(",") if t.strip()]
    from convert_to_ggml import TYPES as GGML_TYPES

    unknown_types = sorted(set(args.whisper_cpp_types) - set(GGML_TYPES))
    if unknown_types:
        parser.error(f"--whisper-cpp-types: unknown {', '.join(unknown_types)}; use {', '.join(GGML_TYPES)}")
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.sentences < 1 or args.timeline_sentences < 1 or not args.variants:
        parser.error("--sentences and --timeline-sentences must be at least 1 and --variants non-empty")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from vllm_whisper.testing.speech import HARVARD_SENTENCES
    from vllm_whisper.testing.timeline import build_timeline

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clips = make_clips(folder / "clips", args.sentences, args.variants, args.snr_db)
        texts = [HARVARD_SENTENCES[i % len(HARVARD_SENTENCES)] for i in range(args.timeline_sentences)]
        timeline = build_timeline(texts, folder / "timeline", TIMELINE_GAPS, TIMELINE_VOICES)
        truth = [item.start for item in timeline.items]
        systems = build_systems(args, folder)
        wer_rows = [score_wer(s, clips, args.variants) for s in progress(systems, desc="WER")]
        ts_rows = timestamp_rows(systems, timeline.audio, truth, timeline.text)
    machine = machine_description()
    audio_seconds = sum(len(c.audio) for c in clips) / SAMPLE_RATE
    print_wer_table(wer_rows, args.variants, f"WER, {args.model}, {args.sentences} sentences x {len(args.variants)} "
                    f"variants ({audio_seconds:.1f} s of audio), noise at {args.snr_db:g} dB SNR", machine)
    print_timestamp_table(ts_rows, f"Segment starts, {args.model}, {len(truth)} sentences with gaps, "
                          f"{timeline.duration:.1f} s file, tolerance {TOLERANCE_S} s", machine)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        write_json(args, machine, clips, wer_rows, ts_rows, timeline.duration, truth)


def write_json(args: argparse.Namespace, machine: str, clips: list[Clip], wer_rows: list[WerRow],
               ts_rows: list[TimestampRow], timeline_seconds: float, truth: list[float]) -> None:
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"}
    descriptions = variant_descriptions(args.snr_db)
    args.json.write_text(json.dumps({
        "benchmark": "accuracy", "model": args.model, "machine": machine, "date": time.strftime("%Y-%m-%d"),
        "options": options, "variants": {v: descriptions[v] for v in args.variants},
        "clips": [{"variant": c.variant, "speaker": c.speaker, "reference": c.text,
                   "seconds": round(len(c.audio) / SAMPLE_RATE, 3)} for c in clips],
        "wer": [asdict(r) for r in wer_rows],
        "timestamps": {"audio_seconds": timeline_seconds, "tolerance_s": TOLERANCE_S,
                       "true_starts": [round(t, 3) for t in truth], "results": [asdict(r) for r in ts_rows]},
    }, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
