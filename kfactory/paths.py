"""User paths: ``~`` and ``$VARIABLES`` expanded the same way everywhere."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from kfactory.errors import ConfigError

STAT_CHUNK = 2048  # files per stat task: threads overlap the waits of a network file system
STAT_THREADS = 8


def expand_path(path: str | os.PathLike) -> Path:
    """A user path with ``~`` and environment variables expanded."""
    return Path(os.path.expandvars(os.path.expanduser(str(path))))


def unset_variables(path: str) -> list[str]:
    """The ``$NAME`` / ``${NAME}`` variables in ``path`` that the environment does not set."""
    names = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", str(path))
    return [name for name in names if name not in os.environ]


def check_variables(key: str, path: str) -> None:
    """Refuse a path whose ``$VARIABLE`` is not set, naming the variable, the same way for every task."""
    if isinstance(path, str) and (unset := unset_variables(path)):
        raise ConfigError(key, path, f"a path whose environment variables are set (${unset[0]} is not)")


def file_stats(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each file's (size, mtime_ns) as int64 arrays, -1 for a file that is gone; no file is opened."""

    def stat_chunk(chunk: Sequence[str]) -> list[int]:
        found = []
        for path in chunk:
            try:
                stat = os.stat(path)
                found += (stat.st_size, stat.st_mtime_ns)
            except OSError:
                found += (-1, -1)
        return found

    chunks = [paths[i : i + STAT_CHUNK] for i in range(0, len(paths), STAT_CHUNK)]
    with ThreadPoolExecutor(min(STAT_THREADS, max(len(chunks), 1))) as pool:
        flat = np.fromiter(itertools.chain.from_iterable(pool.map(stat_chunk, chunks)), np.int64, 2 * len(paths))
    return flat[0::2], flat[1::2]


def replace_durably(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename the finished file ``tmp`` over ``path`` so that a power loss leaves the old file or the new one.

    The file's data reach the disk before the rename, and the rename reaches it
    before this returns (the directory is synced too); a rename alone may leave
    an empty file after a crash on ext4 or XFS.
    """
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_directory(Path(path).parent)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's data and size to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename, a new or removed file) to the disk, where the system allows it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a system without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename still holds there
        pass
    finally:
        os.close(fd)
