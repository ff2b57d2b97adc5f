"""The OpenAI-compatible HTTP and realtime surface of the server."""
