"""User-facing surfaces: the offline LLM API, the command line, and (later) the OpenAI-compatible server."""
