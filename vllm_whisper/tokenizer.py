"""Whisper tokenizer: BPE text tokens from tokenizer.json plus the special, language and timestamp tokens.

Special ids are looked up by their token strings, so English-only vocabularies (tiny.en: start-of-transcript
50257) and multilingual ones (50258, shifted again by large-v3's extra language) are handled by one code path.
Timestamp tokens are not in tokenizer.json: they are the ids after <|notimestamps|>, 0.02 s apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer

from vllm_whisper.languages import LANGUAGES, normalize_language

TIME_PRECISION = 0.02  # seconds per timestamp token
NUM_TIMESTAMP_TOKENS = 1501  # <|0.00|> .. <|30.00|>


class TokenizerLoadError(ValueError):
    """The tokenizer files are missing or do not describe a Whisper vocabulary."""


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of Whisper's control tokens for one vocabulary."""

    eot: int
    sot: int
    translate: int
    transcribe: int
    sot_lm: int
    sot_prev: int
    no_speech: int
    no_timestamps: int

    @property
    def timestamp_begin(self) -> int:
        return self.no_timestamps + 1


class WhisperTokenizer:
    """Text <-> ids for one Whisper vocabulary, with the prompt and timestamp conventions of the reference."""

    def __init__(self, tokenizer: Tokenizer, model_vocab_size: int):
        self.tokenizer = tokenizer
        self.model_vocab_size = model_vocab_size

        def token_id(*candidates: str) -> int:
            for text in candidates:
                found = tokenizer.token_to_id(text)
                if found is not None:
                    return found
            raise TokenizerLoadError(f"tokenizer has none of the Whisper tokens {candidates}")

        self.special = SpecialTokens(
            eot=token_id("<|endoftext|>"),
            sot=token_id("<|startoftranscript|>"),
            translate=token_id("<|translate|>"),
            transcribe=token_id("<|transcribe|>"),
            sot_lm=token_id("<|startoflm|>"),
            sot_prev=token_id("<|startofprev|>"),
            no_speech=token_id("<|nospeech|>", "<|nocaptions|>"),
            no_timestamps=token_id("<|notimestamps|>"),
        )
        self.language_to_id: dict[str, int] = {}
        for code in LANGUAGES:
            found = tokenizer.token_to_id(f"<|{code}|>")
            if found is not None and found < self.special.translate:
                self.language_to_id[code] = found
        self.id_to_language = {v: k for k, v in self.language_to_id.items()}

    # --- properties ---------------------------------------------------------------------------------
    @property
    def eot(self) -> int:
        return self.special.eot

    @property
    def sot(self) -> int:
        return self.special.sot

    @property
    def no_timestamps(self) -> int:
        return self.special.no_timestamps

    @property
    def timestamp_begin(self) -> int:
        return self.special.timestamp_begin

    @property
    def is_multilingual(self) -> bool:
        """The reference's rule: multilingual checkpoints have 51865+ logits, English-only ones 51864."""
        return self.model_vocab_size >= 51865

    @property
    def supported_languages(self) -> dict[str, str]:
        if not self.is_multilingual:
            return {"en": LANGUAGES["en"]}
        return {code: LANGUAGES[code] for code in self.language_to_id}

    # --- prompts ------------------------------------------------------------------------------------
    def sot_sequence(self, language: str | None, task: str, timestamps: bool) -> list[int]:
        """The decoder prompt for one window: <|sot|> [<|lang|> <|task|>] [<|notimestamps|>]."""
        if task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
        sequence = [self.sot]
        if self.is_multilingual:
            sequence.append(self.language_token(language or "en"))
            sequence.append(self.special.translate if task == "translate" else self.special.transcribe)
        else:
            if task == "translate":
                raise ValueError("This English-only model cannot translate; use a multilingual model such as 'base'.")
            if language is not None and normalize_language(language) != "en":
                raise ValueError(f"This English-only model only transcribes English, not {language!r}.")
        if not timestamps:
            sequence.append(self.no_timestamps)
        return sequence

    def language_token(self, language: str) -> int:
        code = normalize_language(language)
        if code not in self.language_to_id:
            raise ValueError(f"Language {language!r} is not in this model's vocabulary.")
        return self.language_to_id[code]

    # --- text ---------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of `text` as plain text: a special token's spelling typed by a user ("<|endoftext|>") is encoded as
        its characters, never as the control token, so prompts cannot steer the decoder's special tokens."""
        tok = self.tokenizer
        if tok.normalizer is not None:
            text = tok.normalizer.normalize_str(text)
        pieces = [piece for piece, _ in tok.pre_tokenizer.pre_tokenize_str(text)] if tok.pre_tokenizer else [text]
        return [token.id for piece in pieces for token in tok.model.tokenize(piece)]

    def decode(self, ids: list[int]) -> str:
        """Text of the ordinary tokens only (special and timestamp tokens are dropped)."""
        return self.tokenizer.decode([i for i in ids if i < self.eot])

    def decode_with_timestamps(self, ids: list[int]) -> str:
        """Text with timestamps rendered as <|1.08|>, for debugging and golden tests."""
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if i >= self.timestamp_begin:
                if run:
                    out.append(self.tokenizer.decode(run))
                    run = []
                out.append(f"<|{self.timestamp_seconds(i):.2f}|>")
            elif i < self.eot:
                run.append(i)
        if run:
            out.append(self.tokenizer.decode(run))
        return "".join(out)

    def is_timestamp(self, token_id: int) -> bool:
        return token_id >= self.timestamp_begin

    def timestamp_seconds(self, token_id: int) -> float:
        return (token_id - self.timestamp_begin) * TIME_PRECISION

    def timestamp_token(self, seconds: float) -> int:
        index = round(seconds / TIME_PRECISION)
        if not 0 <= index < NUM_TIMESTAMP_TOKENS:
            raise ValueError(f"timestamp {seconds} s is outside a 30 s window")
        return self.timestamp_begin + index

    # --- suppression lists -------------------------------------------------------------------------------
    @cached_property
    def non_speech_tokens(self) -> list[int]:
        """Tokens for symbols that are not speech (the reference's suppress_tokens='-1' set)."""
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        miscellaneous = set("♩♪♫♬♭♮♯")
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + list(miscellaneous):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return sorted(result)

    def default_suppress_tokens(self) -> list[int]:
        """Non-speech symbols plus the control tokens that must never be sampled as text."""
        s = self.special
        controls = [s.transcribe, s.translate, s.sot, s.sot_prev, s.sot_lm, s.no_speech]
        return sorted(set(self.non_speech_tokens) | set(controls))

    def suppress_at_begin(self) -> list[int]:
        """A blank and end-of-text may not be the first sampled token."""
        return [self.encode(" ")[0], self.eot]


def load_tokenizer(model_dir: Path, model_vocab_size: int) -> WhisperTokenizer:
    """Load tokenizer.json, or vocab.json + merges.txt (+ added_tokens.json) from a model directory."""
    model_dir = Path(model_dir)
    tokenizer_json = model_dir / "tokenizer.json"
    if tokenizer_json.is_file():
        try:
            tok = Tokenizer.from_file(str(tokenizer_json))
        except Exception as exc:  # tokenizers raises plain Exception on malformed JSON
            raise TokenizerLoadError(f"{tokenizer_json} is not a valid tokenizer file: {exc}") from exc
        return WhisperTokenizer(tok, model_vocab_size)
    vocab, merges = model_dir / "vocab.json", model_dir / "merges.txt"
    if vocab.is_file() and merges.is_file():
        return WhisperTokenizer(_tokenizer_from_vocab_merges(model_dir, model_vocab_size), model_vocab_size)
    raise TokenizerLoadError(
        f"No tokenizer in {model_dir}: expected tokenizer.json, or vocab.json together with merges.txt."
    )


def _tokenizer_from_vocab_merges(model_dir: Path, model_vocab_size: int) -> Tokenizer:
    """Build a byte-level BPE tokenizer as GPT-2/Whisper use it, adding Whisper's special tokens."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers

    bpe = models.BPE.from_file(str(model_dir / "vocab.json"), str(model_dir / "merges.txt"))
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    added_path = model_dir / "added_tokens.json"
    if added_path.is_file():
        added = json.loads(added_path.read_text())
        specials = [text for text, _ in sorted(added.items(), key=lambda kv: kv[1]) if text.startswith("<|")]
    else:
        specials = standard_special_tokens(model_vocab_size)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def standard_special_tokens(model_vocab_size: int) -> list[str]:
    """Whisper's special tokens in id order, for vocabularies that ship without them."""
    codes = list(LANGUAGES)
    if model_vocab_size < 51866:
        codes = codes[:-1]  # only large-v3 knows Cantonese
    return [
        "<|endoftext|>", "<|startoftranscript|>", *[f"<|{c}|>" for c in codes], "<|translate|>",
        "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
        "<|notimestamps|>",
    ]
