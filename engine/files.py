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
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath


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


# --------------------------------------------------------------------------------------------
# Unpacking a model zip: a folder appears whole or not at all


def zip_members(
    archive: zipfile.ZipFile, source: Path, error: type[Exception] = ValueError
) -> dict[str, zipfile.ZipInfo]:
    """Regular-file members of ``archive`` by their path below the model's root (the zip root, or
    its one top folder). Raises ``error`` naming ``source`` for absolute or ``..`` paths,
    backslashes and links (zip-slip)."""
    files = {}
    for info in archive.infolist():
        name = PurePosixPath(info.filename)
        is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
        if name.is_absolute() or ".." in name.parts or "\\" in info.filename or is_link:
            raise error(f"{source.name}: unsafe member {info.filename!r}")
        if not info.is_dir():
            files[str(name)] = info
    tops = {name.split("/", 1)[0] for name in files}
    if len(tops) == 1 and "/" in next(iter(files), ""):
        top = tops.pop() + "/"
        files = {name[len(top) :]: info for name, info in files.items() if name.startswith(top)}
    return files


def unpack_atomic(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], target: Path,
                  check: Callable[[Path], None]) -> Path:  # fmt: skip
    """Unpack ``members`` (:func:`zip_members`) into a hidden folder beside ``target``, call
    ``check(folder)`` (which raises when the model inside cannot be used), then rename the folder
    to ``target``; returns ``target``. On any failure the hidden folder is removed and ``target``
    is never half there. Raises what ``check`` raises, OSError (disk full; ``target`` taken)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.import-"))
    try:
        for member, info in members.items():
            destination = staging / member
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(destination, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
        check(staging)
        os.rename(staging, target)  # fails rather than merge if the name was taken meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
