"""User-facing errors: the CLI prints each problem on one line and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SjcError(Exception):
    """A problem the user can fix (bad input, missing file, unknown plugin...).

    ``problems`` holds one line per problem; the CLI prints them without a traceback.
    """

    def __init__(self, *problems: str) -> None:
        self.problems = [p for p in problems if p]
        super().__init__("\n".join(self.problems))


def closest_first(word: str, candidates: Iterable[str]) -> list[str]:
    """Candidates ordered by similarity to ``word`` (for 'did you mean' hints)."""
    names = sorted(set(candidates))
    return sorted(names, key=lambda c: -difflib.SequenceMatcher(None, word, c).ratio())


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix when a candidate is close enough, else ''."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
