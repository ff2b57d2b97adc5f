"""OpenAI-shaped errors: every client mistake becomes `{"error": {"message", "type", "param", "code"}}` with
the status OpenAI would send, never a 500."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OpenAIError(Exception):
    """An error to send to the client as OpenAI's JSON error body."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    retry_after: int | None = None  # seconds, for 429 / 503

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return headers


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)
