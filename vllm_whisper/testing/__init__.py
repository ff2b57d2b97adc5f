"""Helpers for tests and benchmarks: synthetic speech with known text, WER."""
