"""The one error path: every error a user can act on (a bad argument, file, state or checkpoint)
derives from :class:`InputError`, which the command line reports as one line, ``robust: error: ...``,
with exit status 2. Anything else is a bug, and its traceback is the useful report."""


class InputError(Exception):
    """Bad input, named in the message; the command line prints it on one line and exits with 2."""
