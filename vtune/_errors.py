"""User-facing errors.

Every mistake a user can make at the command line (a missing file, a flag out of
range, an unknown GPU name) is raised as :class:`VtuneError` with a message of one
line that names the input and says how to fix it. The CLI prints that line and
exits with code 2; it never shows a traceback for them.
"""

from __future__ import annotations

__all__ = ["VtuneError"]


class VtuneError(Exception):
    """A bad input or an environment problem the user can fix.

    Args:
        message: One line: what is wrong, naming the flag or file, and the fix.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message.strip().replace("\n", " "))
