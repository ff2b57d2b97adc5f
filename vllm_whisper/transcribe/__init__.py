"""Audio of any length -> windows -> decoded segments with timestamps."""
