"""``python -m vtune``: the command-line entry point."""

from vtune._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
