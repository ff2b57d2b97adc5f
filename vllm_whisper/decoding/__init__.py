"""Per-sequence reference decoding: Whisper's logits rules and a plain greedy single-window decoder.

These are deliberately simple and unbatched; they are the oracle the batched engine is tested against.
"""
