"""Reference decoding, the oracles the batched engine is tested against: a plain greedy single-window decoder
(greedy.py) and long-form transcription on it (reference_runner.py).

Deliberately simple and unbatched; production code never imports this package (tests/test_import_layers.py).
Whisper's logits rules, their per-row reference included, live in vllm_whisper/sampling/.
"""
