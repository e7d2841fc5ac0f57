"""The one exception type for errors a user can cause and fix.

Pages show it with `st.error(str(err))`; CLIs print it and exit with status 2. Anything else that
escapes is a bug in Iris, and is allowed to show a traceback.
"""


import os

# Environment variables whose values are secrets: never written to status.json, logs or messages.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "IRIS_PASSWORD", "IRIS_API_KEY", "OPENAI_API_KEY")


class IrisError(Exception):
    """A user-facing error whose message says what went wrong and what to do about it."""


def redact(text: str) -> str:
    """`text` with the value of every secret environment variable (SECRET_ENV) replaced by '***'."""
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def cli_exit(err: IrisError) -> "NoReturn":  # noqa: F821 - typing only
    """Print a user error on stderr and exit non-zero (used by every `python -m core.<job>`)."""
    import sys

    print(f"error: {redact(str(err))}", file=sys.stderr)
    raise SystemExit(2)
