"""Atomic writes: every checkpoint, cache and results writer goes through here.

A file is written to a temporary file beside its target, flushed to disk and renamed onto the target
(:func:`atomic_file`, :func:`write_bytes`, :func:`write_text`, :func:`write_json`); a directory is built
in a temporary directory beside its target and swapped in (:func:`atomic_directory`, :func:`swap_directory`).
Either way a reader sees the old content or the new one, never half of one, and a writer that fails
(an exception inside the ``with`` block) leaves the old content in place and removes its temporary.

What a crash (a killed process) leaves behind is only the temporary, under a name the caller chooses so
that its own clean-up finds it (``training.checkpoint.clean_temp_dirs`` removes ``.tmp-*``,
``thoughts.io.remove_stale_temporaries`` ``.NAME.tmp-PID-XXXXXXXX`` and ``.NAME.old-PID``).

This is a low layer: it imports nothing from ``mot``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

UMASK = os.umask(0)  # read once at import: os.umask can only be read by setting it (racy in threads)
os.umask(UMASK)
FILE_MODE = 0o666 & ~UMASK  # what open() would give a new file
DIR_MODE = 0o777 & ~UMASK  # what mkdir() would give a new directory

__all__ = ["DIR_MODE", "FILE_MODE", "atomic_directory", "atomic_file", "fsync_dir", "fsync_file", "pid_alive",
           "sha256_file", "swap_directory", "write_bytes", "write_json", "write_text"]


def fsync_file(path: str | os.PathLike) -> None:
    """Flush ``path``'s content to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename into it) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file's content, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def pid_alive(pid: int) -> bool:
    """Whether the process ``pid`` may still be running (the clean-ups of temporaries ask it of the writer
    named in a temporary's name).  This process counts as alive, and so does one that cannot be asked."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists (another user's: PermissionError) or cannot tell: keep its files
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------- files


@contextmanager
def atomic_file(target: str | os.PathLike, *, prefix: str | None = None, suffix: str = ".tmp",
                mode: int | None = FILE_MODE, fsync: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``target`` (an empty file); when the block succeeds it is
    flushed to disk and renamed onto ``target``, otherwise removed.

    ``prefix``: the temporary's name starts with it (default ``.NAME.``; a unique part and ``suffix``
    follow).  ``mode``: the file's permissions (default: what ``open`` would give, not ``mkstemp``'s
    owner-only ``0o600``; None keeps ``0o600``).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}." if prefix is None else prefix, suffix=suffix,
                                dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def write_bytes(target: str | os.PathLike, data: bytes, **options: Any) -> Path:
    """Write ``data`` to ``target`` atomically (``options``: see :func:`atomic_file`)."""
    with atomic_file(target, **options) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: str | os.PathLike, text: str, *, encoding: str = "utf-8", **options: Any) -> Path:
    """Write ``text`` to ``target`` atomically (``options``: see :func:`atomic_file`)."""
    return write_bytes(target, text.encode(encoding), **options)


def write_json(target: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
               ensure_ascii: bool = True, separators: tuple[str, str] | None = None, newline: bool = True,
               **options: Any) -> Path:
    """Write ``obj`` as JSON (``json.dumps`` with these settings, then a newline unless ``newline=False``)
    to ``target`` atomically (``options``: see :func:`atomic_file`)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii, separators=separators)
    return write_text(target, text + ("\n" if newline else ""), **options)


# ---------------------------------------------------------------------------------------------- directories


def swap_directory(tmp: str | os.PathLike, target: str | os.PathLike, *, old_name: str | None = None,
                   keep_existing: bool = False, fsync: bool = True) -> Path:
    """Move the complete directory ``tmp`` onto ``target``.

    An existing ``target`` is first renamed to ``old_name`` beside it (default ``.tmp-old-NAME-PID``),
    then ``tmp`` takes its place and the old one is deleted: a crash in between leaves the old content
    under ``old_name``, never a half-written ``target``.  ``keep_existing``: when ``target`` already
    exists (another process finished the same content first), keep it and delete ``tmp`` instead.
    """
    tmp, target = Path(tmp), Path(target)
    if keep_existing:
        try:
            os.rename(tmp, target)  # fails when target is a non-empty directory: theirs stays
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        if fsync:
            fsync_dir(target.parent)
        return target
    old = None
    if target.exists():
        old = target.parent / (old_name or f".tmp-old-{target.name}-{os.getpid()}")
        if old.exists():
            _remove(old)
        os.replace(target, old)
    os.replace(tmp, target)
    if fsync:
        fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


@contextmanager
def atomic_directory(target: str | os.PathLike, *, temp_name: str | None = None, temp_prefix: str | None = None,
                     old_name: str | None = None, keep_existing: bool = False, mode: int | None = DIR_MODE,
                     fsync: bool = True) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target``; when the block succeeds it is swapped in
    (:func:`swap_directory`), otherwise deleted.

    The temporary is named ``temp_name`` exactly (a leftover of that name is deleted first), or
    ``temp_prefix`` followed by ``mkdtemp``'s unique characters (default prefix ``.tmp-NAME-PID-``).
    ``fsync``: flush the files written into it, and the rename, to disk.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if temp_name is not None:
        tmp = target.parent / temp_name
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)
        tmp.mkdir()
    else:
        prefix = temp_prefix if temp_prefix is not None else f".tmp-{target.name}-{os.getpid()}-"
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    try:
        if mode is not None:
            os.chmod(tmp, mode)  # mkdtemp makes it owner-only
        yield tmp
        if fsync:
            for path in sorted(tmp.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    fsync_file(path)
            fsync_dir(tmp)
        swap_directory(tmp, target, old_name=old_name, keep_existing=keep_existing, fsync=fsync)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
