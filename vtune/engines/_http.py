"""The one HTTP client vtune talks to its engines with (``/health``, ``/v1/models``, ``/metrics``).

An engine listens on this machine, so proxies must never be used: with
``HTTP_PROXY`` set, a client that honours the environment sends every probe to the
proxy (before this module, every ``/metrics`` read then failed silently while
``/health`` worked). The client here is an :class:`httpx.Client` with
``trust_env=False`` (no proxy variables, no ``.netrc``, no ``SSL_CERT_FILE``),
shared by all threads of the process (it is thread-safe). Connections are not
kept alive: a probe on a connection the server is just closing would fail and make
a healthy engine look dead, and a fresh connection to localhost costs nothing.
"""

from __future__ import annotations

import threading

import httpx

__all__ = ["HttpError", "get", "get_or_none"]

_DEFAULT_TIMEOUT_S = 5.0
_CLIENT: httpx.Client | None = None
_CLIENT_LOCK = threading.Lock()


class HttpError(OSError):
    """Nothing answered, or the answer was not 200 (an :class:`OSError`, as socket errors are)."""


def _client() -> httpx.Client:
    global _CLIENT
    with _CLIENT_LOCK:
        if _CLIENT is None:
            _CLIENT = httpx.Client(
                trust_env=False,
                follow_redirects=False,
                timeout=_DEFAULT_TIMEOUT_S,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        return _CLIENT


def get_or_none(url: str, *, timeout_s: float = _DEFAULT_TIMEOUT_S) -> tuple[int, bytes] | None:
    """``(status, body)`` of a GET, or None when nothing answered (refused, reset, timed out)."""
    try:
        response = _client().get(url, timeout=timeout_s)
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError):
        return None
    return response.status_code, response.content


def get(url: str, *, timeout_s: float = _DEFAULT_TIMEOUT_S) -> bytes:
    """The body of a GET that answered 200.

    Raises:
        HttpError: Nothing answered, or the status was not 200.
    """
    answer = get_or_none(url, timeout_s=timeout_s)
    if answer is None:
        raise HttpError(f"no answer from {url}")
    status, body = answer
    if status != 200:
        raise HttpError(f"{url} answered HTTP {status}")
    return body
