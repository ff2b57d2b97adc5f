"""The fallback schedule shared by the CLI, the HTTP form and the realtime session."""

from vllm_whisper.params import TranscriptionParams, fallback_temperatures


def test_fallback_schedule_starts_at_the_given_temperature():
    assert fallback_temperatures(0.0) == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0) == TranscriptionParams().temperature
    assert fallback_temperatures(0.5) == (0.5, 0.7, 0.9)
    assert fallback_temperatures(1.0) == (1.0,)
