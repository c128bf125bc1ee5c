"""The one atomic writer: a file is replaced whole or not at all.

Every file the engine writes that another process (or a later start) reads goes through here:
run status and pid files, train.yaml, the dataset's csv/json files, clips, caches, settings.
The bytes go to a temp file in the target's folder (so ``os.replace`` never crosses file
systems), are flushed and ``fsync``-ed, and the temp file is renamed over the target with
``os.replace`` (atomic on POSIX and Windows); the folder is then ``fsync``-ed where the system
allows it (POSIX), so the rename itself survives a power loss. A failure at any point removes
the temp file and leaves the old target as it was. Readers see the old file or the new one,
never a part.

Written files are ``0644`` (``mkstemp`` would leave them ``0600``). Parent folders are created.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns ``path`` as a Path.

    Raises OSError (disk full, permission denied, ...); the old file is then untouched.
    """
    return _replace_atomic(Path(path), lambda handle: handle.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (no newline translation); returns the path.

    Raises OSError (disk full, permission denied, ...); the old file is then untouched.
    """
    return write_bytes_atomic(path, text.encode("utf-8"))


def copy_atomic(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy the file ``source`` to ``target`` atomically (its bytes, not its permissions or
    times); returns ``target`` as a Path. Large files are copied in blocks, never held in memory.

    Raises OSError: FileNotFoundError for a missing ``source``, or a disk error while
    writing (the old ``target`` is then untouched).
    """
    with open(source, "rb") as reader:
        return _replace_atomic(Path(target), lambda handle: shutil.copyfileobj(reader, handle, 1 << 20))


def _replace_atomic(path: Path, write: Callable) -> Path:
    """Create a temp file beside ``path``, ``write(handle)`` into it, sync it and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)
    return path


def _sync_folder(folder: Path) -> None:
    """``fsync`` a folder so a rename in it is durable. Windows cannot open a folder for this
    (and makes renames durable itself); a file system that refuses is left as it is: the file
    is already written and renamed, only its durability over a power loss is less sure."""
    if os.name == "nt":
        return
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
