"""Writing files so that a reader never sees half of one, and earlier files survive a failure or a power loss.

Output folders change as one unit too: :func:`staged_output` locks an ``--out`` folder (``.foveal.lock``), stages a
command's files in ``.foveal-staging/`` inside it and moves them in only when the command succeeds. An output folder
belongs to one command and one model: ``.foveal-output.json`` records which, and a command that would mix its outputs
with another's is refused unless the caller overwrites them (:func:`folder_owner`).

Every writer in foveal goes through these helpers: the bytes go to a temporary file (or folder) beside the target,
are flushed to the disk (``fsync`` of the file, then of its folder), and only then take the target's name in one
rename. New files get the permissions the process's umask allows (as ``open`` would give them), not the 0600 / 0700
of Python's temporary files.

Temporary names start with ``.`` and contain ``.tmp`` (files) or ``.tmp-`` (folders), so
:func:`remove_stale_temporaries` can clear what an interrupted write left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from foveal.errors import FovealError

PathLike = str | os.PathLike[str]

LOCK_NAME = ".foveal.lock"
STAGING_NAME = ".foveal-staging"
OWNER_NAME = ".foveal-output.json"  # which command and model wrote the folder's outputs
_COMMIT_MARK = ".commit"  # written into the staging folder once every file is complete: the move may begin
_STAGED_OWNER = ".owner.json"  # the owner record, moved to OWNER_NAME with the outputs
_DROP = ".drop"  # earlier outputs that the command's success removes (JSON strings, one a line)
_DROPPING = ".dropping"  # the same, less the names the command writes itself: settled before the move begins

#: Files that show which command wrote a folder without an owner record (None: run_info.json's "kind" says).
_SIGNS: tuple[tuple[str, str | None], ...] = (
    ("run_info.json", None),
    ("checkpoints", "train"),
    ("checkpoint.json", "train"),
    ("predictions.jsonl", "predict"),
    ("metrics.json", "eval"),
    ("explanations.json", "explain"),
)
_OUTPUTS = {"train": "a training run", "eval": "an evaluation", "explain": "explanations", "demo": "the demo"}


def umask() -> int:
    """The process's file-creation mask (read without changing it for longer than one call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to the disk; a no-op where folders cannot be opened (Windows)."""
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


def _fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then every folder (deepest first)."""
    dirs = [folder]
    for root, subdirs, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        dirs.extend(Path(root) / d for d in subdirs)
    for d in reversed(dirs):
        fsync_dir(d)


def missing_reason(path: PathLike) -> str:
    """Why ``path`` cannot be opened although named: "not found", a broken link or a link that loops.

    Returns:
        A phrase to follow the path in a message, e.g. ``"not found"`` or ``"is a symbolic link that loops"``.
    """
    p = Path(path)
    if not os.path.islink(p):
        try:
            os.stat(p)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a link further up the path loops
                return "is inside a symbolic link that loops"
        return "not found"
    try:
        os.stat(p)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link that loops"
        return f"is a broken symbolic link (to {os.readlink(p)}, which does not exist)"
    return "not found"


def not_found(what: str, path: PathLike) -> str:
    """``"<what> not found: <path>"``, or what is wrong instead (a symbolic link that loops, a broken link)."""
    reason = missing_reason(path)
    return f"{what} not found: {path}" if reason == "not found" else f"{what} {path} {reason}"


def writable_dir(folder: PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` if missing and make sure this process can write there, else raise FovealError saying why.

    A file in the way, a symbolic link that loops or a broken one, a read-only or special file system and missing
    permissions are each named. An existing folder's contents are not touched.
    """
    p = Path(folder)
    if os.path.islink(p) and not p.exists():
        raise FovealError(f"{what} {p} {missing_reason(p)}: pass another folder")
    if p.exists() and not p.is_dir():
        raise FovealError(f"{what} {p} is a file: pass a folder (it is created if missing)")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p, prefix=".write-test.", suffix=".tmp"):
            pass
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = "is inside a symbolic link that loops"
        elif isinstance(exc, FileExistsError) or exc.errno == errno.ENOTDIR:
            reason = "cannot be created: a file is in the way of its path"
        else:
            reason = f"is not writable ({exc.strerror or exc})"
        raise FovealError(f"{what} {p} {reason}: pass a folder you can write to") from None
    return p


@contextlib.contextmanager
def atomic_output(path: PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success flush it to the disk and move it over ``path`` in one step.

    A reader never sees a half-written file and an earlier file survives a failed write. Missing parent folders are
    created. A new file gets the umask's permissions, a replaced one keeps its own.

    Args:
        path: final file.
        mode: ``"w"`` (text, UTF-8, no newline translation) or ``"wb"``.

    Yields:
        The open temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    if target.is_dir():
        raise FovealError(f"cannot write {target}: it is a directory; give a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise FovealError(f"cannot write {target}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        # Text that is not valid Unicode (a file name of another encoding, kept by Python as surrogate escapes) is
        # written as \udcXX escapes: JSON reads them back as the same name, and the write does not fail.
        text = {"encoding": "utf-8", "newline": "", "errors": "backslashreplace"}
        kwargs: dict[str, Any] = text if mode == "w" else {}
        with open(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~umask())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FovealError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`); returns the path."""
    with atomic_output(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_output`); returns the path."""
    with atomic_output(path, "w") as handle:
        handle.write(text)
    return Path(path)


def write_json(path: PathLike, obj: Any, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON (UTF-8, a final newline) atomically; returns the path."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; on success it is flushed to the disk and takes ``path``'s place.

    An existing ``path`` is replaced (moved aside, the new folder renamed in, the old one removed), so a crash leaves
    either the old folder or the new one complete, never a mix; on failure the temporary folder is removed and
    ``path`` is left as it was.

    Yields:
        The temporary folder (created with the umask's permissions).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-old-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            fsync_dir(target.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
            fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(folder: PathLike) -> list[Path]:
    """Remove what interrupted atomic writes left in ``folder`` (not recursive); returns what was removed."""
    root = Path(folder)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        name = entry.name
        if not name.startswith("."):
            continue
        if entry.is_dir() and not entry.is_symlink() and ".tmp-" in name:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        elif entry.is_file() and name.endswith(".tmp"):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


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
                    f"another foveal process is writing to {path}; wait for it to finish or choose another out",
                    options=("out",),
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
        replaces: the owner record (see :func:`folder_owner`) of another command's or model's outputs in ``final``
            that this command overwrites; None when the folder was empty or this command's own.
    """

    final: Path
    staging: Path
    resumed: bool
    replaces: dict[str, Any] | None = None

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

    def drop(self, names: Iterable[str]) -> None:
        """Remove these earlier outputs (files or folders directly in ``final``) when the command succeeds, except
        those it writes itself."""
        with open(self.staging / _DROP, "a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(n) + "\n" for n in names)

    def own(self, record: Mapping[str, Any]) -> None:
        """Record ``record`` (``{"command", "model", …}``) as the owner of the folder once the command succeeds."""
        with atomic_output(self.staging / _STAGED_OWNER) as handle:
            json.dump(dict(record), handle, sort_keys=True)


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def folder_owner(folder: PathLike) -> dict[str, Any] | None:
    """Who wrote the outputs in ``folder``: its owner record (``{"command", "model", …}``, written by
    :func:`staged_output`), else for a folder written before owner records what its files show (``{"command",
    "found"}``); None when it holds no output of foveal."""
    p = Path(folder)
    marker = p / OWNER_NAME
    record = _read_record(marker) if marker.is_file() else None
    if record is not None and isinstance(record.get("command"), str):
        return record
    for name, command in _SIGNS:
        if (p / name).exists():
            if command is None:
                info = _read_record(p / name) or {}
                command = str(info.get("kind", "train"))
            return {"command": command, "found": name}
    if marker.exists():
        return {"command": "unknown", "found": OWNER_NAME}
    return None


def _same_owner(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.get("command") == b.get("command") and a.get("model") == b.get("model")


def _describe(record: Mapping[str, Any]) -> str:
    command = str(record.get("command"))
    what = "predictions" if command == "predict" else _OUTPUTS.get(command, f"the outputs of 'foveal {command}'")
    if record.get("model"):
        return f"{what} of the model {record['model']}"
    return f"{what} ({record['found']})" if record.get("found") else what


def _check_owner(final: Path, owner: Mapping[str, Any], previous: Mapping[str, Any]) -> None:
    """Refuse to mix ``owner``'s outputs into a folder that holds another command's or model's."""
    fix = "replace them" if previous.get("command") == owner.get("command") else "write into it anyway"
    raise FovealError(
        f"output folder {final} already holds {_describe(previous)}: choose another out for the "
        f"{_describe(owner)}, or pass overwrite to {fix}",
        options=("out", "overwrite"),
    )


def _foreign_owner(final: Path, owner: Mapping[str, Any], overwrite: bool, resume: bool) -> dict[str, Any] | None:
    """The owner record of another command's or model's outputs in ``final`` that ``overwrite`` lets ``owner``
    replace (None when there are none); FovealError without ``overwrite``, unless ``resume`` continues a run that
    was let in when it started."""
    previous = folder_owner(final)
    if previous is None or _same_owner(previous, owner):
        return None
    staged = final / STAGING_NAME / _STAGED_OWNER
    accepted = _read_record(staged) if resume and staged.exists() else None  # the interrupted run's
    if not (overwrite or (accepted is not None and _same_owner(accepted, owner))):
        _check_owner(final, owner, previous)
    return previous


def check_unmixed(folder: PathLike, command: str) -> None:
    """Refuse to write ``command``'s outputs into ``folder`` when it holds another command's (for commands that write
    their files in place and have no ``--overwrite``: an earlier output of the same command is theirs to replace)."""
    previous = folder_owner(folder) if Path(folder).is_dir() else None
    if previous is not None and previous.get("command") != command:
        raise FovealError(
            f"output folder {folder} already holds {_describe(previous)}: choose another out for the "
            f"{_describe({'command': command})}",
            options=("out",),
        )


def _names(path: Path) -> list[str]:
    """The JSON strings of a drop list, one a line (none when there is no list)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _settle_drops(staging: Path) -> None:
    """The earlier outputs to remove: those named by :meth:`StagedOutput.drop` that lie directly in the folder and
    that the command does not write itself (decided before any file moves, so that finishing an interrupted move
    never removes a file it moved)."""
    names = [n for n in dict.fromkeys(_names(staging / _DROP)) if isinstance(n, str)]
    plain = [n for n in names if n and n == Path(n).name and not n.startswith(".") and n not in ("..", ".")]
    with atomic_output(staging / _DROPPING) as handle:
        handle.writelines(json.dumps(n) + "\n" for n in plain if not os.path.lexists(staging / n))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink(missing_ok=True)


def _publish(staging: Path, final: Path) -> None:
    """Remove the earlier outputs the command replaces, move every visible file of ``staging`` into ``final`` (same
    relative path) and the owner record beside them, then remove ``staging``."""
    if not (staging / _COMMIT_MARK).exists():
        _settle_drops(staging)
        (staging / _COMMIT_MARK).touch()
        fsync_dir(staging)
    for name in _names(staging / _DROPPING):
        _remove(final / name)
    for src in sorted(staging.rglob("*")):
        rel = src.relative_to(staging)
        if not src.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        dst = final / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    if (staging / _STAGED_OWNER).exists():
        os.replace(staging / _STAGED_OWNER, final / OWNER_NAME)
    fsync_dir(final)
    shutil.rmtree(staging, ignore_errors=True)


def _nothing_to_resume(folder: str | os.PathLike[str]) -> FovealError:
    """The error of a ``resume`` into a folder where no interrupted run left its files."""
    return FovealError(
        f"nothing to resume in {folder}: no interrupted run left its files there; run without resume",
        options=("resume",),
    )


@contextlib.contextmanager
def staged_output(
    out: str | os.PathLike[str],
    resume: bool = False,
    keep_on_error: bool = False,
    owner: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Iterator[StagedOutput]:
    """Write one command's outputs into ``out`` as one unit, under the folder's lock.

    Args:
        out: the output folder (created if missing).
        resume: continue the staging folder an interrupted run left (an error when there is none); otherwise a
            leftover staging folder is discarded.
        keep_on_error: keep the staging folder when the block fails (for commands that ``resume`` can continue).
        owner: who writes (``{"command", "model", …}``): a folder that holds the outputs of another command or
            model (:func:`folder_owner`) is refused, and ``owner`` is recorded there when the block succeeds. None:
            no check, no record.
        overwrite: write into a folder that holds another command's or model's outputs (see
            :attr:`StagedOutput.replaces`).

    Yields:
        A :class:`StagedOutput`; when the block succeeds its files are fsync'd and moved into ``out`` (each with
        ``os.replace``), replacing files of the same name.

    Raises:
        FovealError: another process writes to ``out``; ``out`` is a file or cannot be created; ``resume`` without
            an interrupted run; ``out`` holds another command's or model's outputs and not ``overwrite``.
    """
    if owner is not None and Path(out).is_dir():
        _foreign_owner(Path(out), owner, overwrite, resume)  # refused before the lock file is made, then again under it
    if resume and not (Path(out) / STAGING_NAME).exists():  # so too a resume of nothing: no folder or lock is made
        raise _nothing_to_resume(out)
    with locked_folder(out) as final:
        staging = final / STAGING_NAME
        if (staging / _COMMIT_MARK).exists():
            _publish(staging, final)  # a crash during an earlier move: finish it first
        leftover = staging.exists()
        if resume and not leftover:
            raise _nothing_to_resume(final)
        previous = _foreign_owner(final, owner, overwrite, resume) if owner is not None else None
        if leftover and not resume:
            shutil.rmtree(staging)
        staging.mkdir(exist_ok=True)
        staged = StagedOutput(final, staging, resumed=leftover and resume, replaces=previous)
        try:
            if owner is not None:
                staged.own(owner)
            yield staged
        except BaseException as exc:
            interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
            if not (keep_on_error or interrupted):
                shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_tree(staging)
        _publish(staging, final)
