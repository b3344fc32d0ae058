"""The errors a user can act on, and how every command prints them.

Each such error names the file, key, option or path at fault and what was expected. A command's ``main``
wrapped in ``command`` prints it as one line (``error: ...``) and exits with status 1; anything else is a
bug and keeps its traceback.
"""
import functools


class UserError(Exception):
    """Bad input (a path, a file, an option, the data) that the user can fix; the message says which and how."""


def command(main):
    """Decorate a command's ``main(argv=None)``: a ``UserError`` becomes one ``error: ...`` line, exit status 1."""
    @functools.wraps(main)
    def run(argv=None):
        try:
            return main(argv)
        except UserError as error:
            raise SystemExit(f"error: {error}") from None
    return run
