"""Stable partial transcripts for live audio: a word is sent once two successive decodes of the growing audio
agree on it (local agreement), so text already sent never changes; the final decode only appends."""

from __future__ import annotations

from dataclasses import dataclass, field


def _key(word: str) -> str:
    """Words compare without case or trailing punctuation (a later pass may add a comma)."""
    return word.lower().strip(".,!?;:\"'")


@dataclass
class LocalAgreement:
    """Committed words of one utterance, grown from successive hypotheses over the same growing audio."""

    committed: list[str] = field(default_factory=list)
    _previous: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.committed)

    def update(self, hypothesis: str) -> str:
        """Feed one pass's text; return the newly committed text (with a leading space after the first word)."""
        words = hypothesis.split()
        if [_key(w) for w in words[:len(self.committed)]] != [_key(w) for w in self.committed]:
            self._previous = words  # the new pass disagrees with what is sent: wait for agreement again
            return ""
        agreed = []
        for current, previous in zip(words[len(self.committed):], self._previous[len(self.committed):]):
            if _key(current) != _key(previous):
                break
            agreed.append(current)  # the newer pass's spelling: it heard more (no premature full stop)
        self._previous = words
        return self._commit(agreed)

    def finish(self, final: str) -> str:
        """The last pass over the whole utterance: commit what it adds beyond the sent words; the completed
        transcript is then `text`."""
        # When the final pass disagrees with sent words, the sent words stay and only its tail is appended.
        return self._commit(final.split()[len(self.committed):])

    def _commit(self, words: list[str]) -> str:
        if not words:
            return ""
        delta = (" " if self.committed else "") + " ".join(words)
        self.committed.extend(words)
        return delta
