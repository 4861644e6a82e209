"""Errors a user can cause, with the exit codes the CLI maps them to.

Every message is one line that names the input and says how to fix it; the CLI prints it without a
traceback.
"""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


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
        text = self.message if not self.fix else f"{self.message}; {self.fix}"
        return " ".join(text.split())


class InputError(OpsError):
    """Bad usage, config or input data (exit code 2)."""

    exit_code = EXIT_USAGE


class PartialFailure(OpsError):
    """Some hosts or items failed while the others succeeded (exit code 3)."""

    exit_code = EXIT_PARTIAL
