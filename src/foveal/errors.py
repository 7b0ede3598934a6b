"""The one exception type for errors a user can cause, and whose message it is inside a job of several processes."""

import os


class FovealError(Exception):
    """A problem with the user's input (path, file, option, checkpoint).

    The message says what was wrong and how to fix it; the CLI prints it without a traceback and exits non-zero.
    """


def rank_prefix() -> str:
    """The "rank 1 of 2: " that starts a message inside a ``torchrun`` job of several processes (else ""), so that
    every rank's message says whose it is."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f"rank {os.environ.get('RANK', '0')} of {world}: " if world > 1 else ""
