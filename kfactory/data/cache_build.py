"""Write the shared decode cache in one parallel pass, and read it back as batches.

The pass that builds an entry is also the check for unreadable files: files that
fail to decode are left out of the entry and listed in its manifest, so no run
decodes the folder a second time to find them. Records are written in a fixed
random order, so reading a shard front to back is already a shuffled stream.

A run reads an entry either at random, memory-mapped (when it fits the budget,
``kfactory.data.cache_store.fits_in_memory``), or streamed from its shards in
order, where memory no longer grows with the number of images.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow as tf

from kfactory.data.cache_store import (
    DECODER,
    FILES_FILE,
    FORMAT,
    MANIFEST,
    ORDER_FILE,
    Entry,
    build_lock,
    canonical_files,
    entry_key,
    fits_on_disk,
    no_room,
    open_entry,
    publish,
    remove_abandoned_builds,
    remove_damaged,
    room_needed,
    temporary_folder,
)
from kfactory.data.image_check import progress_bar, read_image
from kfactory.errors import ConfigError
from kfactory.paths import fsync_file

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
WRITE_BATCH = 256  # images decoded per write
WRITE_AHEAD = 4  # batches decoded ahead while one is written
SHARD_BYTES = 256 * 2**20  # a new shard file after about this many bytes
READ_BUFFER = 4 * 2**20  # bytes read ahead per open shard
SHARDS_READ_AT_ONCE = 4  # training interleaves this many shards, in a new order each epoch
SHUFFLE_BYTES = 64 * 2**20  # a streamed training split shuffles at most this many bytes of images
FALLBACK = "Reading the files every epoch instead; data.cache_dir=<a folder on a larger disk> decodes them once"


def ensure_entry(
    paths: list[str], size: tuple[int, int], root: Path, source: str, mode: str = "auto"
) -> tuple[Entry, np.ndarray] | None:
    """The entry for ``paths`` at ``size`` under ``root`` and the files it indexes (``canonical_files``):
    opened if published, else built (once, across processes).

    None when a new entry has no room on its disk (or the disk fills while it is
    built) and ``data.cache`` is ``auto``: the run reads the files instead. With
    ``memory`` or ``disk``, the same is refused in one line (ConfigError).
    """
    started = time.time()
    files = canonical_files(paths)
    key = entry_key(files.tolist(), size)
    entry = open_entry(root, key)
    if entry is None:
        with build_lock(root, key, log):
            entry = open_entry(root, key)  # another job may have published it while this one waited
            if entry is None:
                remove_abandoned_builds(root, key)
                remove_damaged(root, key, log)
                if not fits_on_disk(mode, root, len(files), size):
                    log.warning("No room for the decode cache: %s. %s", room_needed(root, len(files), size), FALLBACK)
                    return None
                try:
                    return build_entry(files.tolist(), size, root, key, source), files
                except OSError as error:
                    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    if mode != "auto":  # the build's folder is already removed
                        raise ConfigError("data.cache_dir", str(root), no_room(root, len(files), size)) from None
                    log.warning(
                        "The disk filled while the decode cache was built (%s): %s. %s",
                        error.strerror,
                        room_needed(root, len(files), size),
                        FALLBACK,
                    )
                    return None
    log.info(
        "Decode cache: %d images at %dx%d from %s (listed and checked in %.1f s)",
        entry.manifest["readable"],
        *size,
        entry.path,
        time.time() - started,
    )
    return entry, files


def open_built(root: Path, key: str) -> tuple[Entry, np.ndarray] | None:
    """The published entry ``key`` and the files it was built from, without listing or statting them; or None."""
    entry = open_entry(root, key)
    if entry is None:
        return None
    text = (entry.path / FILES_FILE).read_bytes().decode("utf-8", "surrogateescape")
    return entry, np.asarray(text.split("\n") if text else [], dtype=str)


def build_entry(paths: list[str], size: tuple[int, int], root: Path, key: str, source: str) -> Entry:
    """Decode every file once into a temporary folder, then publish it as ``key``."""
    tmp = temporary_folder(root, key)
    log.info("Decoding %d images once at %dx%d into the decode cache %s", len(paths), *size, root / key)
    try:
        shards, order = write_shards(paths, size, tmp)
        np.save(tmp / ORDER_FILE, order)
        write_synced(tmp / FILES_FILE, "\n".join(paths).encode("utf-8", "surrogateescape"))
        manifest = {
            "format": FORMAT,
            "decoder": DECODER,
            "size": list(size),
            "files": len(paths),
            "readable": int(len(order)),
            "unreadable": np.setdiff1d(np.arange(len(paths)), order).tolist(),
            "shards": shards,
            "source": source,
            "created": time.time(),
        }
        write_synced(tmp / MANIFEST, json.dumps(manifest).encode())
        return publish(tmp, root, key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_shards(paths: list[str], size: tuple[int, int], folder: Path) -> tuple[list[dict], np.ndarray]:
    """Decode ``paths`` in a fixed random order into raw uint8 shard files; return the shards and the record order."""
    shuffled = np.random.default_rng(0).permutation(len(paths))
    ds = tf.data.Dataset.from_tensor_slices((shuffled, np.asarray(paths)[shuffled]))
    ds = ds.map(lambda i, p: (i, read_image(p, size)), num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors().batch(WRITE_BATCH).prefetch(WRITE_AHEAD)
    per_shard = max(WRITE_BATCH, SHARD_BYTES // (size[0] * size[1] * 3))
    shards: list[dict] = []
    order: list[np.ndarray] = []
    out, progress, done = None, progress_bar(len(paths)), 0
    # Each finished shard is flushed to the disk on a thread while the next one is decoded, so that
    # publishing (which needs every shard on the disk) does not wait for the whole entry's write-back.
    with ThreadPoolExecutor(1) as flusher:
        flushed = []
        try:
            for indices, images in ds:
                if out is None or shards[-1]["records"] >= per_shard:
                    out = _next_shard(out, folder, shards)
                    if len(shards) > 1:
                        flushed.append(flusher.submit(fsync_file, folder / shards[-2]["file"]))
                out.write(memoryview(images.numpy()))  # no copy of the batch
                order.append(indices.numpy())
                shards[-1]["records"] += len(order[-1])
                done += len(order[-1])
                if progress and done < len(paths):  # the last line is the final update's
                    progress.update(done)
        finally:
            if out is not None:
                out.close()
        if shards:
            flushed.append(flusher.submit(fsync_file, folder / shards[-1]["file"]))
        for flush in flushed:
            flush.result()  # a failed flush fails the build: nothing half-written is published
    if progress:
        progress.update(len(paths), finalize=True)  # the unreadable files are done too
    return shards, (np.concatenate(order) if order else np.zeros(0, np.int64))


def _next_shard(out, folder: Path, shards: list[dict]):
    if out is not None:
        out.close()
    shards.append({"file": f"images-{len(shards):05d}.bin", "records": 0})
    return open(folder / shards[-1]["file"], "wb")  # noqa: SIM115 (closed by the caller or the next shard)


def write_synced(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    fsync_file(path)


class DecodedImages:
    """An entry's images, addressed by the index of a readable file: one array in memory, or its shards on disk."""

    def __init__(self, entry: Entry, files: np.ndarray, paths: list[str], in_memory: bool) -> None:
        """Images ``paths`` (readable ones) of ``entry``, which was built from ``files`` (``ensure_entry``)."""
        self.entry, self.size = entry, entry.size
        listed = listed_index(files, paths)
        order = entry.order()  # record r holds listed file order[r]
        record_of_listed = np.full(entry.manifest["files"], -1, np.int64)
        record_of_listed[order] = np.arange(len(order))
        self.position = np.where(listed >= 0, record_of_listed[listed], -1)  # the record of each source image
        if (self.position < 0).any():
            raise ValueError(f"the decode cache {entry.path} holds no record of an image it is asked for")
        # record r holds source image record_index[r] (-1: an image this source does not use)
        self.record_index = np.full(len(order), -1, np.int64)
        self.record_index[self.position] = np.arange(len(listed))
        self.pixels = load_pixels(entry) if in_memory else None

    def stream_order(self, indices: np.ndarray) -> np.ndarray:
        """``indices`` in the order the shards hold them: the order ``batches`` yields them in when streaming."""
        return indices if self.pixels is not None else indices[np.argsort(self.position[indices], kind="stable")]

    def batches(
        self, indices: np.ndarray, labels: np.ndarray, training: bool, shuffle: int, seed: int, batch: int
    ) -> tf.data.Dataset:
        """Batches of (uint8 images, labels) of readable files ``indices``; ``labels`` is indexed like them."""
        if self.pixels is not None:
            return self._from_memory(indices, labels[indices], training, shuffle, seed, batch)
        return self._from_shards(indices, labels, training, shuffle, seed, batch)

    def _from_memory(self, indices, labels, training, shuffle, seed, batch) -> tf.data.Dataset:
        pixels, (h, w) = self.pixels, self.size
        ds = tf.data.Dataset.from_tensor_slices((self.position[indices], labels))
        if training:
            ds = ds.shuffle(min(len(indices), shuffle), seed=seed, reshuffle_each_iteration=True)

        def gather(rows: tf.Tensor) -> tf.Tensor:
            images = tf.numpy_function(pixels.gather, [rows], tf.uint8, stateful=False)
            return tf.ensure_shape(images, [None, h, w, 3])

        return ds.batch(batch).map(lambda r, y: (gather(r), y), num_parallel_calls=AUTOTUNE)

    def _from_shards(self, indices, labels, training, shuffle, seed, batch) -> tf.data.Dataset:
        (h, w), record_bytes = self.size, self.size[0] * self.size[1] * 3
        member = np.zeros(len(self.record_index), bool)
        member[self.position[indices]] = True
        record_member = tf.constant(member)
        files, counts = zip(*((str(p), n) for p, n in self.entry.shards()), strict=True)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        shards = tf.data.Dataset.from_tensor_slices((list(files), starts, np.asarray(counts, np.int64)))
        if training:
            shards = shards.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

        def records(path: tf.Tensor, start: tf.Tensor, count: tf.Tensor) -> tf.data.Dataset:
            data = tf.data.FixedLengthRecordDataset(path, record_bytes, buffer_size=READ_BUFFER)
            return tf.data.Dataset.zip((tf.data.Dataset.range(start, start + count), data))

        at_once = min(SHARDS_READ_AT_ONCE, len(files)) if training else 1  # else in record order: stream_order
        ds = shards.interleave(records, cycle_length=at_once, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.filter(lambda r, _: tf.gather(record_member, r)).take(len(indices))  # stop after the last one
        if training:  # the records are in random order already; the buffer mixes the interleaved shards
            buffer = max(1, min(len(indices), shuffle, SHUFFLE_BYTES // record_bytes))
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)

        def decode(r: tf.Tensor, data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:  # a batch at once
            return tf.reshape(tf.io.decode_raw(data, tf.uint8), [-1, h, w, 3]), self._labels_of(r, labels)

        return ds.batch(batch).map(decode, num_parallel_calls=AUTOTUNE)

    def _labels_of(self, records: tf.Tensor, labels: np.ndarray) -> tf.Tensor:
        """The labels of a batch of ``records``, looked up in ``labels`` (indexed like the source) on the host:
        no copy of the label table goes into the graph (N x classes floats for label sets)."""
        lookup = lambda r: labels[self.record_index[r]]  # noqa: E731
        found = tf.numpy_function(lookup, [records], tf.as_dtype(labels.dtype), stateful=False)
        return tf.ensure_shape(found, [None, *labels.shape[1:]])


def listed_index(files: np.ndarray, paths: list[str]) -> np.ndarray:
    """The place of each of ``paths`` among an entry's ``files`` (sorted); -1 where a path is not one of them."""
    wanted = np.asarray([os.path.abspath(p) for p in paths], dtype=str)
    places = np.minimum(np.searchsorted(files, wanted), max(len(files) - 1, 0))
    found = files[places] == wanted if len(files) else np.zeros(len(wanted), bool)
    return np.where(found, places, -1)


def holds_all(files: np.ndarray, paths: list[str]) -> bool:
    """Whether an entry built from ``files`` holds every one of ``paths``."""
    return bool((listed_index(files, paths) >= 0).all())


def unreadable_paths(entry: Entry, files: np.ndarray, paths: list[str]) -> np.ndarray:
    """Indices into ``paths`` of the files ``entry`` found unreadable."""
    return np.flatnonzero(np.isin(listed_index(files, paths), entry.unreadable))


class MappedPixels:
    """An entry's records, memory-mapped: the OS page cache holds them, shared by every process that reads them."""

    def __init__(self, entry: Entry) -> None:
        h, w = entry.size
        self.shards = [np.memmap(path, np.uint8, "r", shape=(n, h, w, 3)) for path, n in entry.shards() if n]
        counts = [len(shard) for shard in self.shards]
        self.shard_of = np.repeat(np.arange(len(counts)), counts)  # record -> its shard
        self.offset = np.arange(sum(counts)) - np.repeat(np.cumsum([0, *counts[:-1]]), counts)  # -> row in it

    def __len__(self) -> int:
        return len(self.shard_of)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """The records ``rows``, copied into one array."""
        out = np.empty((len(rows), *self.shards[0].shape[1:]), np.uint8)
        shard_of = self.shard_of[rows]
        for shard in np.unique(shard_of):
            where = shard_of == shard
            out[where] = self.shards[shard][self.offset[rows[where]]]
        return out


def load_pixels(entry: Entry) -> MappedPixels:
    """The entry's records for random access; mapped, so nothing is read before a batch needs it."""
    h, w = entry.size
    count = entry.manifest["readable"]
    log.info("Decode cache: %d images (%.2f GB) mapped for random access", count, count * h * w * 3 / 1e9)
    return MappedPixels(entry)
