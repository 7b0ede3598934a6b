"""Files that reach the disk whole, and output folders that change as one unit.

- :func:`atomic_write` / :func:`atomic_file`: a temporary file beside the target, flushed and fsync'd, renamed over
  it, then the folder fsync'd, so a reader sees the old file or the new one, also after a crash or a power loss.
- :func:`staged_output`: one command's outputs in an ``--out`` folder. The folder is locked (``.foveal.lock``,
  ``fcntl.flock``, refused at once when another process holds it); files are written into ``.foveal-staging/``
  inside it and moved in only when the command succeeds. A failed command leaves the folder's earlier files as they
  were; a killed one leaves the staging folder, which ``resume=True`` continues and a fresh start discards.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from foveal.errors import FovealError

LOCK_NAME = ".foveal.lock"
STAGING_NAME = ".foveal-staging"
_COMMIT_MARK = ".commit"  # written into the staging folder once every file is complete: the move may begin


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (new names, renames) to the disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; when the block succeeds, fsync it and rename it over ``path``.

    Args:
        path: the final file (missing parent folders are created).
        mode: ``"w"`` (UTF-8 text, no newline translation) or ``"wb"``.

    Raises:
        FovealError: naming ``path`` when it is a folder or cannot be written; an earlier file stays intact.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    if target.is_dir():
        raise FovealError(f"cannot write {target}: it is a folder; give a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except (OSError, UnicodeError) as exc:
        raise FovealError(f"cannot write {target}: {getattr(exc, 'strerror', None) or exc}") from None
    tmp = Path(name)
    try:
        kwargs: dict[str, Any] = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
        with open(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FovealError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically (see :func:`atomic_file`); returns the path."""
    with atomic_file(path, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def locked_folder(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the length of a ``with`` block.

    Raises:
        FovealError: when ``folder`` is a file or cannot be created, or another process holds its lock (refused at
            once, not waited for).
    """
    import fcntl

    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise FovealError(f"output folder {path} is a file: pass a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise FovealError(f"cannot create output folder {path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FovealError(
                    f"another foveal process is writing to {path}; wait for it to finish or choose another --out"
                ) from None
            raise FovealError(f"cannot lock output folder {path}: {exc.strerror or exc}") from None
        yield path
    finally:
        os.close(fd)  # releases the lock


@dataclass(frozen=True)
class StagedOutput:
    """An output folder being written: files go to ``staging`` and appear in ``final`` when the command succeeds.

    Attributes:
        final: the user's ``--out`` folder.
        staging: the folder inside it that receives this command's files.
        resumed: whether ``staging`` holds the files of an interrupted run that this one continues.
    """

    final: Path
    staging: Path
    resumed: bool

    def staged(self, name: str) -> Path:
        """Where to write the output file ``name`` now."""
        return self.staging / name

    def published(self, name: str) -> Path:
        """Where the output file ``name`` will be once the command succeeds (the path to report)."""
        return self.final / name

    def published_path(self, staged: str | os.PathLike[str]) -> str:
        """The final path of a file written under ``staging`` (other paths are returned as they are)."""
        p = Path(staged)
        try:
            return str(self.final / p.relative_to(self.staging))
        except ValueError:
            return str(p)


def _publish(staging: Path, final: Path) -> None:
    """Move every visible file of ``staging`` into ``final`` (same relative path), then remove ``staging``."""
    (staging / _COMMIT_MARK).touch()
    fsync_dir(staging)
    for src in sorted(staging.rglob("*")):
        rel = src.relative_to(staging)
        if not src.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        dst = final / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    fsync_dir(final)
    shutil.rmtree(staging, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            with open(p, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(folder)


@contextlib.contextmanager
def staged_output(
    out: str | os.PathLike[str], resume: bool = False, keep_on_error: bool = False
) -> Iterator[StagedOutput]:
    """Write one command's outputs into ``out`` as one unit, under the folder's lock.

    Args:
        out: the output folder (created if missing).
        resume: continue the staging folder an interrupted run left (an error when there is none); otherwise a
            leftover staging folder is discarded.
        keep_on_error: keep the staging folder when the block fails (for commands that ``resume`` can continue).

    Yields:
        A :class:`StagedOutput`; when the block succeeds its files are fsync'd and moved into ``out`` (each with
        ``os.replace``), replacing files of the same name.

    Raises:
        FovealError: another process writes to ``out``; ``out`` is a file or cannot be created; ``resume`` without
            an interrupted run.
    """
    with locked_folder(out) as final:
        staging = final / STAGING_NAME
        if (staging / _COMMIT_MARK).exists():
            _publish(staging, final)  # a crash during an earlier move: finish it first
        leftover = staging.exists()
        if resume and not leftover:
            raise FovealError(
                f"nothing to resume in {final}: no interrupted run left its files there; run without --resume"
            )
        if leftover and not resume:
            shutil.rmtree(staging)
        staging.mkdir(exist_ok=True)
        try:
            yield StagedOutput(final, staging, resumed=leftover and resume)
        except BaseException as exc:
            interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
            if not (keep_on_error or interrupted):
                shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_tree(staging)
        _publish(staging, final)
