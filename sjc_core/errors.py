"""User-facing errors: the CLI prints each problem on one line and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


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


ECHO_LIMIT = 60  # characters of a user's value repeated in an error line


def shorten(value: Any, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters with an ellipsis: values echoed in errors.

    repr also escapes newlines and NULs, so an echoed value never breaks the one-line rule.
    """
    if isinstance(value, (str, bytes, list, tuple, dict)) and len(value) > 4 * limit:
        value = value[: 4 * limit] if not isinstance(value, dict) else dict(list(value.items())[:limit])
    try:
        text = repr(value)
    except ValueError:  # an integer too long for str()
        text = f"<a whole number of {value.bit_length()} bits>"
    return text if len(text) <= limit else text[: limit - 1] + "…"
