"""Errors a user can cause, with the exit codes the CLI maps them to.

Every message is one line that names the input and says how to fix it; the CLI prints it without a
traceback.
"""

import re

from petals_ops.util.safe_text import printable

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


# A Hugging Face access token (hf_ and 34 letters/digits today; runs of 10 or more are matched,
# so "hf_transfer" is not).
SECRET_RE = re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{10,}")


def redact(text: str) -> str:
    """``text`` with every token-like value replaced by ``hf_***``: a secret must never reach a terminal
    or a log, not even in the error about that secret."""
    return SECRET_RE.sub("hf_***", text)


def looks_secret(text: str) -> bool:
    return SECRET_RE.search(text) is not None


def one_line(error: BaseException | str, limit: int | None = None, *, tail: bool = False) -> str:
    """``error`` (an exception or its text) as one line fit for a terminal, a log or a table cell.

    Whitespace runs (a library's multi-line message) become one space; secrets are redacted before the
    cut, so no part of a token survives it; at most ``limit`` characters, the last ones when ``tail``
    (where some libraries put the cause); control characters replaced (remote peers' text); an exception
    with no text gives its type name. Every quoted error goes through here.
    """
    text = redact(" ".join(str(error).split()))
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    if limit is not None and len(text) > limit:
        text = text[-limit:] if tail else text[:limit]
    return printable(text)


class OpsError(Exception):
    """A failure petals-ops explains to the user in one line (exit code 1 unless said otherwise)."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, fix: str | None = None, exit_code: int | None = None):
        self.message = message
        self.fix = fix
        if exit_code is not None:
            self.exit_code = exit_code
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return one_line(self.message if not self.fix else f"{self.message}; {self.fix}")


class InputError(OpsError):
    """Bad usage, config or input data (exit code 2)."""

    exit_code = EXIT_USAGE


class PartialFailure(OpsError):
    """Some hosts or items failed while the others succeeded (exit code 3)."""

    exit_code = EXIT_PARTIAL
