"""The one user-facing error type: library code raises ``UserError`` for a user's mistake, and every command
(``m4mjax.run.cli.report_errors``) turns it into ONE line ``<command>: error: <what> (<where>)``, exit 2.

Library modules import it from here (not from the command-line module, which re-exports it for commands)."""
from __future__ import annotations


class UserError(ValueError):
    """A user's mistake (bad file, flag value, config key, missing workdir): reported as ONE line
    ``<command>: error: <what> (<where>)`` on stderr with exit status 2 and no traceback."""

    def __init__(self, what: str, where: str | None = None, *, reads_in_flight: bool = False):
        # reads_in_flight: raised after a failed Orbax read, whose TensorStore threads may still print
        # "Event loop is closed" tracebacks until the process exits (report_errors then silences stderr)
        self.what, self.where, self.reads_in_flight = what, where, reads_in_flight
        super().__init__(f"{what} ({where})" if where else what)


def user_error(e: BaseException, where: str) -> UserError:
    """A UserError from a library's ValueError/OSError message about ``where`` (a leading "where: " dropped)."""
    what = str(e).strip() or type(e).__name__
    for prefix in (f"{where}: ", f"{where} "):
        if what.startswith(prefix):
            what = what[len(prefix):]
    return UserError(what, where)
