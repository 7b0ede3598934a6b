"""The one exception type for errors a user can cause."""


class FovealError(Exception):
    """A problem with the user's input (path, file, option, checkpoint).

    The message says what was wrong and how to fix it; the CLI prints it without a traceback and exits non-zero.
    """
