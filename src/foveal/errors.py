"""The one exception type for errors a user can cause, and whose message it is inside a job of several processes;
what to say about a path that looks right but is not."""

import os
import unicodedata


class FovealError(Exception):
    """A problem with the user's input (path, file, option, checkpoint).

    The message says what was wrong and how to fix it; the CLI prints it without a traceback and exits non-zero.
    It names the caller's parameters as the Python API spells them ("tta applies to segmentation model checkpoints");
    ``options`` lists those names, which the command line writes as its flags ("--tta applies to …").
    """

    def __init__(self, message: str, *, options: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.options = options


def rank_prefix() -> str:
    """The "rank 1 of 2: " that starts a message inside a ``torchrun`` job of several processes (else ""), so that
    every rank's message says whose it is."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f"rank {os.environ.get('RANK', '0')} of {world}: " if world > 1 else ""


def _hidden(ch: str) -> bool:
    """Whether ``ch`` does not show as itself in a terminal: format and control characters (byte-order mark, zero
    width space, direction marks, tab, carriage return) and spaces other than the plain one (no-break space)."""
    category = unicodedata.category(ch)
    return category in ("Cf", "Cc") or (category == "Zs" and ch != " ")


def path_note(path: object) -> str:
    """What a missing path's message should add when its text hides the reason, else "".

    Names the first invisible character (e.g. a byte-order mark U+FEFF from a list file saved by Notepad, or a zero
    width space from a pasted path) and where it is, or says that the path is wrapped in quotes or spaces.

    Returns:
        ``"; the path contains an invisible character U+FEFF (…) at position 1: …"`` or ``""``.
    """
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    for i, ch in enumerate(text):
        if _hidden(ch):
            name = unicodedata.name(ch, "a control character")
            mark = ", a byte-order mark as Notepad writes them" if ch == "\ufeff" else ""
            return (
                f"; the path contains an invisible character U+{ord(ch):04X} ({name}{mark}) at position {i + 1}: "
                "delete it (type the path again by hand)"
            )
    bare = text.strip()
    if len(bare) >= 2 and bare[0] == bare[-1] and bare[0] in "'\"":
        return "; the path is wrapped in quotes: remove them"
    if text != text.strip():
        return "; the path starts or ends with spaces: remove them"
    return ""


def missing_message(what: str, path: object, reason: str, fix: str) -> str:
    """``"<what> <path> does not exist: <fix>"`` for a path that cannot be opened.

    Args:
        what: what the path should be ("image", "checkpoint").
        path: the path as given.
        reason: :func:`foveal.io.missing_reason`'s phrase ("not found", or a broken or looping link).
        fix: what to do, when the path's text hides nothing (:func:`path_note` says what to do otherwise).
    """
    text = f"{what} {path} {'does not exist' if reason == 'not found' else reason}"
    note = path_note(path)
    return text + note if note else f"{text}: {fix}"
