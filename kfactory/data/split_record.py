"""The split a run trained on, written down: ``splits.csv`` and its fingerprint ``splits.json``.

A training run records every image of its source once, with its label, its
split (``train``, ``val``, ``test``, or ``skipped`` for a file that does not
decode) and its fold; eval, resume and the folds of a cross-validation read
that record instead of drawing the split again, so new, removed or edited
files can never change an old run's test set. Each row also keeps the file's
size and modification time (``mtime_ns``) when the run started; a file that is
gone or changed since is refused in one line, or, with
``data.on_changed=use_remaining``, left out, and the log says so.
Sources held in memory (digits, keras, arrays of your own) record the row
index as ``file`` and a digest of each row's pixels and label instead of
``mtime_ns``.

Nothing here imports TensorFlow or decodes an image: checking a record costs one
``stat`` per file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig

from kfactory.data.sources import ImageSource, fold_indices
from kfactory.errors import ConfigError
from kfactory.paths import file_stats

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SPLITS_FILE = "splits.csv"  # in the run directory: one row per image of the source
FINGERPRINT_FILE = "splits.json"  # beside it: the source, its fingerprint and the split settings
FORMAT = 1  # splits.json's "format": what this module writes and reads
SPLIT_NAMES = ("train", "val", "test")
SKIPPED = "skipped"  # the split of a file that does not decode: left out of every split
NO_FOLD = -1  # the fold of a test or skipped image, and of every image without data.folds
FILES, ARRAYS = "files", "arrays"  # what a record's rows name: file paths, or rows of an in-memory source
STAMP = {FILES: "mtime_ns", ARRAYS: "digest"}  # the column that tells a changed image, beside ``size``
ON_CHANGED = ("refuse", "use_remaining")  # data.on_changed
SHOWN = 3  # gone or changed files named in a refusal


@dataclass
class SplitRecord:
    """A run's split as written down: one row per image, and the metadata of ``splits.json``."""

    rows: pd.DataFrame  # file, label, split, fold, size, and mtime_ns (files) or digest (arrays)
    meta: dict[str, Any]
    where: Path | None = None  # the splits.csv it was read from

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def counts(self) -> dict[str, int]:
        """Rows per split, ``skipped`` included."""
        found = self.rows["split"].value_counts()
        return {name: int(found.get(name, 0)) for name in (*SPLIT_NAMES, SKIPPED)}

    def only(self, *splits: str) -> SplitRecord:
        """The rows of ``splits`` alone (eval reads and checks only the split it scores)."""
        return replace(self, rows=self.rows[self.rows["split"].isin(splits)])

    def for_fold(self, fold: int) -> SplitRecord:
        """The same record with fold ``fold`` as the validation split (data.folds: the others train)."""
        rows = self.rows.copy()
        pool = rows["fold"] != NO_FOLD
        rows.loc[pool, "split"] = np.where(rows.loc[pool, "fold"] == fold, "val", "train")
        order = rows["split"].map({name: i for i, name in enumerate((*SPLIT_NAMES, SKIPPED))})
        rows = rows.iloc[np.argsort(order.to_numpy(), kind="stable")].reset_index(drop=True)
        return replace(self, rows=rows, meta={**self.meta, "settings": {**self.meta["settings"], "fold": fold}})


def fingerprint(names: Sequence[str], sizes: np.ndarray, stamps: np.ndarray) -> str:
    """A sha256 over the (name, size, stamp) rows, in any order: equal exactly when the files and their stats are."""
    rows = zip(list(names), np.asarray(sizes).tolist(), np.asarray(stamps).tolist(), strict=True)
    lines = sorted(f"{n}\t{s}\t{t}\n" for n, s, t in rows)
    return hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def data_fingerprint(paths: Sequence[str]) -> tuple[str, np.ndarray, np.ndarray]:
    """The fingerprint of a file list from its stats alone, and the (size, mtime_ns) arrays it covers."""
    sizes, mtimes = file_stats(paths)
    return fingerprint(paths, sizes, mtimes), sizes, mtimes


def row_digests(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A 64-bit digest of each in-memory image's pixels and label, as int64."""
    pixels, labels = np.ascontiguousarray(images).reshape(len(images), -1), np.ascontiguousarray(labels)
    digests = b"".join(
        hashlib.blake2b(row.tobytes() + label.tobytes(), digest_size=8).digest()
        for row, label in zip(pixels, labels, strict=True)
    )
    return np.frombuffer(digests, "<i8").astype(np.int64)


def record_split(
    listed: ImageSource,
    skipped: Sequence[str],
    kept: ImageSource,
    indices: dict[str, np.ndarray],
    data: DictConfig,
    seed: int,
) -> SplitRecord:
    """The record of a split just drawn: ``indices`` index ``kept``, which is ``listed`` less ``skipped``.

    Rows go train, val, test, skipped, each split in its drawn order, so reading
    the record gives the same images in the same order.
    """
    if listed.paths is None:
        kept_rows = np.arange(len(listed))
    else:
        left_out = set(skipped)
        kept_rows = np.flatnonzero(np.fromiter((p not in left_out for p in listed.paths), bool, len(listed)))
    skipped_rows = np.setdiff1d(np.arange(len(listed)), kept_rows)
    order = np.concatenate([*(kept_rows[indices[name]] for name in SPLIT_NAMES), skipped_rows]).astype(np.int64)
    split = np.repeat([*SPLIT_NAMES, SKIPPED], [*(len(indices[name]) for name in SPLIT_NAMES), len(skipped_rows)])
    folds = np.full(len(listed), NO_FOLD, np.int64)
    for fold in range(data.folds):  # every image's fold, so each fold's run can read the others
        folds[kept_rows[fold_indices(kept.labels, data.folds, fold, data.test_split, seed)[1]]] = fold
    if listed.paths is None:
        names, kind = [str(i) for i in order], ARRAYS
        sizes = np.full(len(order), listed.images[0].nbytes if len(listed) else 0, np.int64)
        stamps = row_digests(listed.images, listed.labels)[order]
    else:
        names, kind = [os.path.abspath(listed.paths[i]) for i in order], FILES
        sizes, stamps = file_stats(names)
    settings = {"seed": seed, "val_split": data.val_split, "test_split": data.test_split, "folds": data.folds}
    meta = {
        "format": FORMAT,
        "kind": kind,
        "source": data.source,
        "files": len(order),
        "fingerprint": fingerprint(names, sizes, stamps),
        "settings": {**settings, "fold": data.fold},
        "class_names": list(listed.class_names),
        "multilabel": listed.labels.ndim == 2,
        "label_separator": data.label_separator,
    }
    labels = label_names(listed.labels[order], listed.class_names, data.label_separator)
    columns = {"file": names, "label": labels, "split": split, "fold": folds[order], "size": sizes, STAMP[kind]: stamps}
    import pandas as pd

    return SplitRecord(pd.DataFrame(columns), meta)


def label_names(labels: np.ndarray, class_names: Sequence[str], separator: str) -> np.ndarray:
    """Labels as the record writes them: a class name, or a multi-hot row's names joined by ``separator``."""
    names = np.asarray(class_names, dtype=object)
    if labels.ndim == 1:
        return names[labels]
    return np.asarray([separator.join(names[row > 0]) for row in labels], dtype=object)


def label_values(names: pd.Series, meta: dict[str, Any]) -> np.ndarray:
    """The record's labels back as the source holds them: int64 indices, or multi-hot float32 rows."""
    import pandas as pd

    class_names = meta["class_names"]
    if not meta["multilabel"]:
        return pd.Categorical(names, categories=class_names).codes.astype(np.int64)
    hot = names.str.get_dummies(sep=meta["label_separator"]).reindex(columns=class_names, fill_value=0)
    return hot.to_numpy(np.float32)


def write_split(run_dir: Path, record: SplitRecord) -> None:
    """``splits.csv``, then ``splits.json`` (which a reader needs too), each written whole or not at all."""
    run_dir.mkdir(parents=True, exist_ok=True)
    table = run_dir / f".{SPLITS_FILE}.tmp"
    record.rows.to_csv(table, index=False)
    os.replace(table, run_dir / SPLITS_FILE)
    meta = run_dir / f".{FINGERPRINT_FILE}.tmp"
    meta.write_text(json.dumps(record.meta, indent=2) + "\n")
    os.replace(meta, run_dir / FINGERPRINT_FILE)


def read_split(run_dir: Path) -> SplitRecord | None:
    """The split recorded in ``run_dir``, or None for a run from before splits were recorded.

    A ``splits.csv`` whose rows are not the number ``splits.json`` counts (cut
    short, or left by another write) is refused; each row's own stats are what
    ``check_files`` compares, so the fingerprint is not computed again here.
    """
    import pandas as pd

    table, meta_file = run_dir / SPLITS_FILE, run_dir / FINGERPRINT_FILE
    if not (table.is_file() and meta_file.is_file()):
        return None
    try:
        meta = json.loads(meta_file.read_text())
        stamp = STAMP[meta["kind"]]
        types = {"file": str, "label": str, "split": str, "fold": np.int64, "size": np.int64, stamp: np.int64}
        rows = pd.read_csv(table, dtype=types, usecols=list(types), keep_default_na=False, na_filter=False)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(str(table), "unreadable", f"a split record kfactory wrote ({error})") from None
    if meta.get("format") != FORMAT or len(rows) != meta.get("files"):
        found = f"{len(rows)} rows, format {meta.get('format')}"
        accepted = f"the {meta.get('files')} rows of format {FORMAT} that {FINGERPRINT_FILE} records ({found})"
        raise ConfigError(str(table), "inconsistent", accepted)
    return SplitRecord(rows, meta, table)


def check_settings(record: SplitRecord, data: DictConfig, seed: int) -> None:
    """Refuse split settings other than those a recorded split was drawn with (a run keeps its split)."""
    current = {"seed": seed, "val_split": data.val_split, "test_split": data.test_split, "folds": data.folds}
    for name, value in current.items():
        recorded = record.meta["settings"][name]
        if value != recorded and not (name == "val_split" and data.folds):  # folds: val_split is not used
            key = name if name == "seed" else f"data.{name}"
            accepted = f"{recorded}, as the split recorded in {record.where} was drawn; a new split needs a new run"
            raise ConfigError(key, value, accepted)


def source_key(data: DictConfig) -> tuple[str, Any]:
    """The key (and its value) that names ``data``'s images, for a refusal about them."""
    key = {"folder": "path", "csv": "csv", "keras": "name", "custom": "_target_"}.get(data.source, "source")
    return f"data.{key}", data[key]


def check_files(record: SplitRecord, data: DictConfig, arrays: ImageSource | None = None) -> SplitRecord:
    """``record`` if every image it uses is as recorded; else refuse, or with ``data.on_changed=use_remaining``
    the record without the gone and changed images, saying so.

    Files are compared by stat (size, mtime_ns); an in-memory source (``arrays``,
    loaded afresh) by each row's digest.
    """
    used, bad, what = find_changes(record, arrays)
    if not bad.any():
        return record
    splits = "/".join(name for name in SPLIT_NAMES if (used["split"] == name).any())
    remaining = int((~bad).sum())
    if data.on_changed != "use_remaining" or not remaining:
        todo = f"add data.on_changed=use_remaining to use the other {remaining}" if remaining else "none remain"
        accepted = f"the {splits} images recorded in {record.where} as they were; of {len(used)}, {what}; {todo}"
        raise ConfigError(*source_key(data), accepted)
    log.warning(
        "data.on_changed=use_remaining: of the %d %s images recorded in %s, %s; using the other %d",
        len(used),
        splits,
        record.where,
        what,
        remaining,
    )
    return replace(record, rows=record.rows.drop(used.index[bad]))


def find_changes(record: SplitRecord, arrays: ImageSource | None = None) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The rows ``record``'s splits use, which of them are gone or changed, and both counted in words:
    ``1 (a.png) gone, 0 changed (size or mtime)``."""
    used = record.rows[record.rows["split"] != SKIPPED]
    stamp = STAMP[record.kind]
    if record.kind == FILES:
        sizes, stamps = file_stats(used["file"].tolist())
    else:
        rows = used["file"].to_numpy(np.int64)
        there = rows < len(arrays)
        digests = row_digests(arrays.images, arrays.labels)[np.where(there, rows, 0)] if len(arrays) else 0
        sizes, stamps = np.where(there, used["size"], -1), np.where(there, digests, -1)
    gone = sizes == -1
    changed = ~gone & ((sizes != used["size"].to_numpy()) | (stamps != used[stamp].to_numpy()))
    how = "size or mtime" if record.kind == FILES else "pixels or label"
    return used, gone | changed, f"{_first(used['file'], gone)} gone, {_first(used['file'], changed)} changed ({how})"


def _first(files: pd.Series, mask: np.ndarray) -> str:
    """``N`` and the first files of ``files`` where ``mask`` holds: ``2 (a.png, b.png)``."""
    count = int(mask.sum())
    if not count:
        return "0"
    names = files[mask].head(SHOWN).tolist()
    return f"{count} ({', '.join(names)}{', ...' if count > SHOWN else ''})"


def recorded_source(
    record: SplitRecord, arrays: ImageSource | None = None
) -> tuple[ImageSource, dict[str, np.ndarray], list[str]]:
    """The images ``record`` uses as a source, its (train, val, test) indices into it, and its skipped files.

    A file source is rebuilt from the record alone (no listing, so files added
    since are not part of it); an in-memory source is ``arrays``, indexed by row.
    """
    rows = record.rows
    skipped = rows.loc[rows["split"] == SKIPPED, "file"].tolist()
    used = rows[rows["split"] != SKIPPED]
    split = used["split"].to_numpy()
    if record.kind == ARRAYS:
        numbers = used["file"].to_numpy(np.int64)
        return arrays, {name: numbers[split == name] for name in SPLIT_NAMES}, skipped
    source = ImageSource(record.meta["class_names"], label_values(used["label"], record.meta), used["file"].tolist())
    return source, {name: np.flatnonzero(split == name) for name in SPLIT_NAMES}, skipped


def share_with_fold(first_dir: Path, fold_dir: Path, fold: int) -> None:
    """Give ``fold_dir`` the split recorded in ``first_dir``, with ``fold`` validating, unless it has its own."""
    if (fold_dir / FINGERPRINT_FILE).is_file():
        return
    first = read_split(first_dir)
    if first is not None:
        write_split(fold_dir, first.for_fold(fold))
