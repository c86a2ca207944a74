"""The close matches of a misspelt name, for one-line errors."""
from __future__ import annotations

import difflib
from typing import Iterable


def did_you_mean(word: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.6) -> str:
    """``"; did you mean a, b?"`` naming the (at most ``n``) ``choices`` closest to ``word``, best first, or ``""``
    when none is within ``cutoff`` (difflib's similarity ratio, 0 to 1)."""
    close = difflib.get_close_matches(word, sorted(choices), n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(close)}?" if close else ""
