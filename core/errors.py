"""The one exception type for errors a user can cause and fix.

Pages show it with `st.error(str(err))`; CLIs print it and exit with status 2. Anything else that
escapes is a bug in Iris, and is allowed to show a traceback.
"""


class IrisError(Exception):
    """A user-facing error whose message says what went wrong and what to do about it."""


def cli_exit(err: IrisError) -> "NoReturn":  # noqa: F821 - typing only
    """Print a user error on stderr and exit non-zero (used by every `python -m core.<job>`)."""
    import sys

    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2)
