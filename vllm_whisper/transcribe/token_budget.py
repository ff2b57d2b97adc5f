"""The max_completion_tokens allowance of one input, shared by all its pieces (parallel chunking decodes several
windows at once, so each window reserves its share when it starts and settles it when its result is kept)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBudget:
    """Tokens the input may still decode; limit None means no limit."""

    limit: int | None
    spent: int = 0  # tokens of the windows kept (or judged silent) so far
    reserved: int = 0  # held by windows being decoded

    def reserve(self, wanted: int) -> int:
        """Reserve up to `wanted` tokens for one window; 0 when nothing is left now."""
        if self.limit is None:
            return wanted
        granted = max(0, min(wanted, self.limit - self.spent - self.reserved))
        self.reserved += granted
        return granted

    def settle(self, granted: int, used: int) -> None:
        """A window is done with its reservation of `granted` tokens, of which it kept `used`."""
        if self.limit is None:
            return
        self.reserved -= granted
        self.spent += min(used, granted)

    @property
    def spent_for_good(self) -> bool:
        """Nothing is left and no window holds a reservation that could give some back."""
        return self.limit is not None and self.reserved == 0 and self.spent >= self.limit
