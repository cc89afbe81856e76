"""The shared decode cache on disk: where it lives, what names an entry, who may write one, and the memory budget.

An entry holds every readable image of a file list, decoded and resized once to
one input size, as raw uint8 records in a few shard files. Its name (the key) is
a hash of what determines its content: each file's path, size and modification
time, the input size and the decoder's version. So every run and sweep job on the
same files at the same size reads one entry, and a changed file makes a new one.

An entry is built in a private temporary folder and published by renaming that
folder, which is atomic on local and network file systems alike: a reader sees a
whole entry or none, and a build that is killed leaves only its temporary folder,
which no reader opens and the next build removes. Builders of one key take a
file lock first, so other jobs wait for the first build instead of decoding the
same files again; the lock only saves work, the rename is what keeps readers safe.

TensorFlow-free: this module names and guards entries; kfactory.data.cache_build
writes and reads them. ``python -m kfactory.data.cache_store list`` lists the
entries, ``... delete KEY|--all`` deletes them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kfactory.errors import ConfigError
from kfactory.paths import expand_path, file_stats, fsync_directory

CACHE_DIR_VARIABLE = "KFACTORY_CACHE_DIR"  # overrides the default root when data.cache_dir is null
FORMAT = "kfactory-decoded-v1"  # the on-disk layout; bump when the records change
DECODER = "decode_image-v1"  # kfactory.data.image_check.decode_image; bump when its pixels change
MANIFEST = "manifest.json"
ORDER_FILE = "order.npy"  # record r holds the image of file order[r] of the listed files
FILES_FILE = "files.txt"  # the listed files: distinct absolute paths, sorted, one a line
BUDGET_FRACTION = 0.5  # data.cache_budget_gb=null: this share of the memory available at start
DISK_HEADROOM_BYTES = 256 * 2**20  # left free on the cache's disk beyond a new entry
ENTRY_BYTES_PER_FILE = 512  # an entry's files.txt and order.npy, per listed file
WAIT_LOG_SECONDS = 30  # a job waiting for another's build says so this often


@dataclass(frozen=True)
class Entry:
    """One published cache entry: its folder and its manifest."""

    path: Path
    manifest: dict

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.manifest["size"])  # type: ignore[return-value]

    @property
    def unreadable(self) -> np.ndarray:
        """Indices (into the listed files) of the files that did not decode."""
        return np.asarray(self.manifest["unreadable"], dtype=np.int64)

    def order(self) -> np.ndarray:
        return np.load(self.path / ORDER_FILE)

    def shards(self) -> list[tuple[Path, int]]:
        """Each shard file with its number of records, in record order."""
        return [(self.path / s["file"], int(s["records"])) for s in self.manifest["shards"]]


def cache_root(cache_dir: str | None) -> Path:
    """The folder that holds the entries: ``data.cache_dir``, else $KFACTORY_CACHE_DIR, else the user's cache."""
    if cache_dir is not None:
        return expand_path(cache_dir)
    if os.environ.get(CACHE_DIR_VARIABLE):
        return expand_path(os.environ[CACHE_DIR_VARIABLE])
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return expand_path(base) / "kfactory" / "decoded"


def entry_key(paths: list[str], size: tuple[int, int]) -> str:
    """The name of the entry for ``paths`` decoded at ``size``: a hash of each file's path, size and mtime too."""
    sizes, mtimes = file_stats(paths)
    digest = hashlib.sha256(f"{FORMAT}\n{DECODER}\n{size[0]}x{size[1]}\n".encode())
    digest.update("\0".join(paths).encode("utf-8", "surrogateescape"))
    digest.update(np.ascontiguousarray(np.stack([sizes, mtimes], 1), dtype="<i8").tobytes())
    return f"{size[0]}x{size[1]}-{len(paths)}-{digest.hexdigest()[:20]}"


KEY = re.compile(r"\d+x\d+-\d+-[0-9a-f]{20}")  # what entry_key names an entry: no other folder is one


def open_entry(root: Path, key: str) -> Entry | None:
    """The published entry ``key`` under ``root``, or None (none published, or a damaged one: ``damage``)."""
    path = root / key
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return None if damage(path, manifest) else Entry(path, manifest)


def damage(path: Path, manifest: dict | None = None) -> str | None:
    """What is wrong with the entry folder ``path``, or None: a manifest that does not read, a file it
    names that is missing, or a shard of another size than its images need (one ``stat`` per shard)."""
    try:
        manifest = manifest or json.loads((path / MANIFEST).read_text())
        height, width = manifest["size"]
        shards = [(shard["file"], int(shard["records"])) for shard in manifest["shards"]]
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MANIFEST} does not read"
    if manifest.get("format") != FORMAT:
        return f"its {MANIFEST} is not of format {FORMAT}"
    for name in (ORDER_FILE, FILES_FILE):
        if not (path / name).is_file():
            return f"its {name} is missing"
    for name, records in shards:
        try:
            found = (path / name).stat().st_size
        except OSError:
            return f"its {name} is missing"
        if found != records * height * width * 3:
            return f"its {name} holds {found:,} bytes, not the {records * height * width * 3:,} of its {records} images"
    return None


def remove_damaged(root: Path, key: str, log) -> None:
    """Delete a folder at ``key`` that is not a whole entry (call only while holding its lock): a published
    entry is whole, so one that is not was damaged since, and the next build replaces it."""
    path = root / key
    if path.is_dir() and (what := damage(path)):
        log.warning("The decode cache entry %s is damaged (%s): deleted; its files are decoded again", path, what)
        shutil.rmtree(path, ignore_errors=True)


def temporary_folder(root: Path, key: str) -> Path:
    """A private folder to build ``key`` in, named so no reader takes it for an entry."""
    path = root / f".{key}.tmp-{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"
    path.mkdir(parents=True)
    return path


def publish(tmp: Path, root: Path, key: str) -> Entry:
    """Rename the finished ``tmp`` to its key; if another builder got there first, keep theirs."""
    fsync_directory(tmp)
    try:
        os.rename(tmp, root / key)
    except OSError:  # the key exists: an identical entry was published meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_directory(root)
    entry = open_entry(root, key)
    if entry is None:
        raise OSError(f"the decode cache entry {root / key} could not be published")
    return entry


def remove_abandoned_builds(root: Path, key: str) -> None:
    """Delete the temporary folders of ``key`` left by killed builds (call only while holding its lock)."""
    for tmp in root.glob(f".{key}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def build_lock(root: Path, key: str, log) -> Iterator[None]:
    """Hold the lock for building ``key``; wait, saying so, while another process holds it.

    The kernel releases the lock of a process that dies, so a killed builder never
    blocks the next one. Where the file system refuses locks, building goes on
    unlocked: the atomic publish still keeps readers safe.
    """
    from filelock import FileLock, Timeout

    root.mkdir(parents=True, exist_ok=True)
    lock, holder = FileLock(str(root / f".{key}.lock")), root / f".{key}.holder"
    waited = 0.0
    while True:
        try:
            lock.acquire(timeout=WAIT_LOG_SECONDS)
            break
        except Timeout:
            waited += WAIT_LOG_SECONDS
            who = holder.read_text().strip() if holder.exists() else "another process"
            log.info("Waiting %.0f s so far for %s, which is building the decode cache %s", waited, who, key)
        except OSError as error:
            log.warning("The decode cache %s cannot be locked (%s); building it unlocked", root, error)
            yield
            return
    try:
        holder.write_text(f"{socket.gethostname()} pid {os.getpid()}\n")
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def image_bytes(count: int, size: tuple[int, int]) -> int:
    """What ``count`` decoded RGB images at ``size`` take in memory."""
    return count * size[0] * size[1] * 3


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (Linux's MemAvailable, else free pages)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def memory_budget(budget_gb: float | None) -> int:
    """``data.cache_budget_gb`` in bytes; null: BUDGET_FRACTION of the memory available now."""
    if budget_gb is not None:
        return int(budget_gb * 1e9)
    return int(available_memory() * BUDGET_FRACTION)


def fits_in_memory(mode: str, count: int, size: tuple[int, int], budget_gb: float | None) -> bool:
    """Whether ``data.cache`` ``mode`` keeps ``count`` images at ``size`` in memory; refuse ``memory`` past the budget.

    Decided before anything is decoded, from the number of files listed.
    """
    if mode not in ("auto", "memory"):
        return False
    need, budget = image_bytes(count, size), memory_budget(budget_gb)
    if need <= budget:
        return True
    if mode == "memory":
        shown = "null (half the memory available now)" if budget_gb is None else f"{budget_gb:g}"
        accepted = (
            f"auto, disk or none: {count} images at {size[0]}x{size[1]} need {need / 1e9:.2f} GB in memory, "
            f"over data.cache_budget_gb={shown} ({budget / 1e9:.2f} GB); or raise data.cache_budget_gb"
        )
        raise ConfigError("data.cache", mode, accepted)
    return False


def free_bytes(root: Path) -> int:
    """Bytes a process may still write on the file system that holds (or will hold) ``root``."""
    path = root
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def entry_room(count: int, size: tuple[int, int]) -> int:
    """What building an entry of ``count`` files at ``size`` needs free on its disk, headroom included."""
    return image_bytes(count, size) + count * ENTRY_BYTES_PER_FILE + DISK_HEADROOM_BYTES


def room_needed(root: Path, count: int, size: tuple[int, int], free: int | None = None) -> str:
    """What an entry of ``count`` images at ``size`` needs under ``root``, and what is free there, in words."""
    free = free_bytes(root) if free is None else free
    need = entry_room(count, size) / 1e9
    said = f"{count} images at {size[0]}x{size[1]} need {need:.2f} GB; {free / 1e9:.2f} GB is free under {root}"
    if entries := list_entries(root):  # old entries stay until deleted: the likeliest thing to free
        held = sum(entry_bytes(e) for e in entries) / 1e9
        command = f"python -m kfactory.data.cache_store --cache-dir {shlex.quote(str(root))} list"
        held_by = "1 earlier entry takes" if len(entries) == 1 else f"{len(entries)} earlier entries take"
        said += f", where {held_by} {held:.2f} GB ({command})"
    return said


def no_room(root: Path, count: int, size: tuple[int, int], free: int | None = None) -> str:
    """The accepted values when ``data.cache=memory|disk`` has no room for its entry."""
    return (
        f"a folder on a disk with room for the decode cache ({room_needed(root, count, size, free)}); "
        "or a smaller model.input_size, or data.cache=none to read the files every epoch"
    )


def fits_on_disk(mode: str, root: Path, count: int, size: tuple[int, int]) -> bool:
    """Whether a new entry of ``count`` files at ``size`` fits on ``root``'s disk; refuse ``memory`` and ``disk``
    (which insist on the cache) when it does not. ``auto`` then reads the files instead."""
    free = free_bytes(root)
    if entry_room(count, size) <= free:
        return True
    if mode in ("memory", "disk"):
        raise ConfigError("data.cache_dir", str(root), no_room(root, count, size, free))
    return False


def check_disk_room(mode: str, cache_dir: str | None, paths: list[str], size: tuple[int, int]) -> None:
    """Refuse ``data.cache=memory|disk`` before anything is decoded when the entry it needs is missing and
    cannot fit on its disk (an entry already built needs no room)."""
    root = cache_root(cache_dir)
    if mode not in ("memory", "disk") or entry_room(len(paths), size) <= free_bytes(root):
        return
    if open_entry(root, entry_key(canonical_files(paths).tolist(), size)) is None:
        fits_on_disk(mode, root, len(paths), size)


def canonical_files(paths: list[str]) -> np.ndarray:
    """The distinct absolute paths of ``paths``, sorted: what an entry is built from, whatever the listing order."""
    return np.unique(np.asarray([os.path.abspath(p) for p in paths], dtype=str))


def list_entries(root: Path) -> list[Entry]:
    """The published entries under ``root``, newest first."""
    return scan(root)[0]


def scan(root: Path) -> tuple[list[Entry], dict[str, str]]:
    """The published entries under ``root``, newest first, and the folders named as entries are that are not
    whole ones, each with what is wrong. Other folders (a ``data.cache_dir`` shared with other files) are
    neither: nothing here lists or deletes them."""
    entries, damaged = [], {}
    for path in root.iterdir() if root.is_dir() else ():
        if not (KEY.fullmatch(path.name) and path.is_dir()):
            continue
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = None
        if what := damage(path, manifest):
            damaged[path.name] = what
        else:
            entries.append(Entry(path, manifest))
    return sorted(entries, key=lambda e: e.manifest.get("created", 0), reverse=True), damaged


def entry_bytes(entry: Entry) -> int:
    return sum(f.stat().st_size for f in entry.path.iterdir() if f.is_file())


def main(argv: list[str] | None = None) -> int:
    """``python -m kfactory.data.cache_store list|delete`` over the decode cache."""
    parser = argparse.ArgumentParser(prog="python -m kfactory.data.cache_store", description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", default=None, help="the cache root (default: data.cache_dir's default)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the entries with their size, images and source")
    delete = commands.add_parser("delete", help="delete entries by key")
    delete.add_argument("keys", nargs="*")
    delete.add_argument("--all", action="store_true", help="delete every entry and abandoned build")
    args = parser.parse_args(argv)
    root = cache_root(args.cache_dir)
    entries, damaged = scan(root)
    if args.command == "list":
        print(f"{root}: {len(entries)} entries")
        for e in entries:
            made = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.manifest.get("created", 0)))
            m = e.manifest
            print(f"{e.key}  {entry_bytes(e) / 1e9:.2f} GB  {m['readable']} images  {made}  {m.get('source', '')}")
        for key, what in damaged.items():  # never read; the next build of the key replaces it
            print(f"{key}  damaged: {what}")
        return 0
    known = {**{e.key: e.path for e in entries}, **{key: root / key for key in damaged}}
    unknown = [k for k in args.keys if k not in known]
    if unknown or not (args.keys or args.all):
        print(f"No such entry under {root}: {', '.join(unknown) or '(name keys or --all)'}", file=sys.stderr)
        return 2
    for key in known if args.all else args.keys:
        shutil.rmtree(known[key])
        print(f"deleted {key}")
    if args.all:
        for key in {tmp.name[1:].split(".tmp-")[0] for tmp in root.glob(".*.tmp-*")}:
            remove_abandoned_builds_if_free(root, key)
    return 0


def remove_abandoned_builds_if_free(root: Path, key: str) -> None:
    """Remove ``key``'s temporary folders unless a live build holds its lock."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(root / f".{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return
    try:
        remove_abandoned_builds(root, key)
    finally:
        lock.release()


if __name__ == "__main__":
    raise SystemExit(main())
