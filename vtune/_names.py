"""Names that become file and folder names (a study's ``<name>.db``, ``<name>/``).

A user-supplied name is checked before anything is written: ``--study ../evil``
would otherwise put ``evil.db`` and ``evil/`` outside ``--studies-dir``, and
``--study team/x`` would make a nested folder. A plain name is letters, digits,
``-``, ``_`` and ``.``, at most :data:`MAX_NAME_LENGTH` characters, and not ``.``
or ``..``. :func:`clean_name` turns free text (a model folder and a workload file)
into such a name for the defaults vtune derives itself.
"""

from __future__ import annotations

import re

from vtune._errors import VtuneError

__all__ = ["MAX_NAME_LENGTH", "check_name", "clean_name"]

#: Longest name accepted (file systems allow 255 bytes; the name gets suffixes).
MAX_NAME_LENGTH = 100

_PLAIN = re.compile(r"[A-Za-z0-9._-]+")
_NOT_PLAIN = re.compile(r"[^A-Za-z0-9._-]+")


def check_name(value: str, flag: str) -> str:
    """Returns ``value`` if it is a plain name, else raises a one-line error.

    Args:
        value: The name as the user gave it.
        flag: The flag or field it came from (``--study``), for the message.

    Returns:
        ``value`` unchanged.

    Raises:
        VtuneError: Empty, longer than :data:`MAX_NAME_LENGTH`, ``.``/``..``, or
            containing anything but letters, digits, ``-``, ``_`` and ``.``.
    """
    fix = "use letters, digits, '-', '_' and '.' only (e.g. llama8b-chatbot)"
    if not isinstance(value, str) or not value:
        raise VtuneError(f"{flag}: the name is empty; {fix}")
    shown = value if len(value) <= 40 else value[:37] + "..."
    if value in (".", ".."):
        raise VtuneError(f"{flag} {value!r}: not a name but a folder reference; {fix}")
    if len(value) > MAX_NAME_LENGTH:
        raise VtuneError(f"{flag} {shown!r}: {len(value)} characters, at most {MAX_NAME_LENGTH}; use a shorter name")
    if not _PLAIN.fullmatch(value):
        bad = sorted({c for c in value if not _PLAIN.fullmatch(c)})
        what = "a path" if "/" in value or "\\" in value else f"the character(s) {''.join(bad)!r}"
        raise VtuneError(f"{flag} {shown!r}: a name, not {what}; {fix}")
    return value


def clean_name(text: str, *, fallback: str = "study") -> str:
    """A plain name made from free text: other characters become ``-``.

    Leading dots and dashes are dropped (no hidden files, nothing that reads as a
    flag), the result is cut to :data:`MAX_NAME_LENGTH` characters, and
    ``fallback`` is returned when nothing is left.

    Args:
        text: E.g. ``Llama-3.1-8B-chatbot`` or ``my model/../x``.
        fallback: The name when ``text`` has no usable character.

    Returns:
        A name that :func:`check_name` accepts.
    """
    name = _NOT_PLAIN.sub("-", text).lstrip(".-")[:MAX_NAME_LENGTH].rstrip("-")
    if not name or name in (".", ".."):
        name = fallback
    return check_name(name, "name")
