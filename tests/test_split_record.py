"""splits.csv: the split a run trained on, written once and read back by eval, resume and the folds."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kfactory.data import split_record
from kfactory.data.sources import fold_indices, list_folder
from kfactory.data.split_record import (
    FINGERPRINT_FILE,
    SPLITS_FILE,
    SplitRecord,
    check_files,
    data_fingerprint,
    file_stats,
    label_names,
    label_values,
    read_split,
    share_with_fold,
    write_split,
)
from kfactory.errors import ConfigError
from tests.conftest import compose_config, write_image_folder

SPLITS = ("train", "val", "test")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two classes of 10 small PNGs, and one file that does not decode."""
    root = write_image_folder(tmp_path / "images", {"cats": 10, "dogs": 10}, size=8)
    (root / "cats" / "broken.png").write_bytes(b"not an image")
    return root


def folder_config(root: Path, *overrides: str):
    keys = ["data=folder", f"data.path={root}", "data.cache=none", "model.input_size=[32,32]", "model.weights=null"]
    return compose_config([*keys, *overrides])


def split_files(splits) -> dict[str, list[str]]:
    """Each split's files (absolute), in the order the split holds them."""
    paths = splits.source.paths
    return {name: [os.path.abspath(paths[i]) for i in splits.indices[name]] for name in SPLITS}


def new_run(tmp_path: Path, name: str = "run") -> Path:
    run_dir = tmp_path / name
    run_dir.mkdir()
    return run_dir


def test_a_drawn_split_is_written_and_read_back_identically(folder, tmp_path):
    from kfactory.data.pipeline import make_splits

    run_dir, cfg = new_run(tmp_path), folder_config(folder)
    drawn = make_splits(cfg, run_dir)
    rows = pd.read_csv(run_dir / SPLITS_FILE)
    assert list(rows.columns[:4]) == ["file", "label", "split", "fold"] and len(rows) == 21
    assert rows.loc[rows["split"] == "skipped", "file"].tolist() == [str(folder / "cats" / "broken.png")]
    meta = json.loads((run_dir / FINGERPRINT_FILE).read_text())
    assert meta["kind"] == "files" and meta["files"] == 21 and meta["settings"]["seed"] == cfg.seed
    assert meta["fingerprint"] == data_fingerprint(rows["file"].tolist())[0]  # stats now are those recorded
    read = make_splits(cfg, run_dir)
    assert drawn.drawn and not read.drawn
    assert split_files(read) == split_files(drawn)
    for name in SPLITS:
        assert read.source.labels[read.indices[name]].tolist() == drawn.source.labels[drawn.indices[name]].tolist()
    assert read.skipped == drawn.skipped


def test_the_recorded_unreadable_files_are_not_decoded_again(folder, tmp_path, monkeypatch):
    from kfactory.data import pipeline

    run_dir, cfg = new_run(tmp_path), folder_config(folder, "data.cache=memory")
    drawn = pipeline.make_splits(cfg, run_dir)
    monkeypatch.setattr(pipeline, "ensure_entry", lambda *args: pytest.fail("the record names its decode cache entry"))
    monkeypatch.setattr(pipeline, "drop_unreadable", lambda *args: pytest.fail("the record lists unreadable files"))
    read = pipeline.make_splits(cfg, run_dir)
    assert read.skipped == drawn.skipped and split_files(read) == split_files(drawn)
    assert read.source.decoded.entry.path == drawn.source.decoded.entry.path  # the entry the training run built
    assert len(read.source.decoded.pixels) == 20  # held for random access: the readable files


def test_an_in_memory_source_records_row_numbers_and_reads_them_back(tmp_path):
    from kfactory.data.pipeline import make_splits

    run_dir, cfg = new_run(tmp_path), compose_config(["model.input_size=[32,32]", "data.folds=3", "data.fold=1"])
    drawn = make_splits(cfg, run_dir)  # digits: 1,797 rows in memory
    rows = pd.read_csv(run_dir / SPLITS_FILE)
    assert "digest" in rows.columns and sorted(rows["file"]) == list(range(1797))
    assert set(rows.loc[rows["split"] == "val", "fold"]) == {1} and set(rows.loc[rows["split"] == "test", "fold"]) == {
        -1
    }
    read = make_splits(cfg, run_dir)
    assert not read.drawn and all(np.array_equal(read.indices[n], drawn.indices[n]) for n in SPLITS)


def add_images(folder: Path, tmp_path: Path, count: int) -> None:
    """``count`` new images in each class folder of ``folder``, the others left as they are."""
    more = write_image_folder(tmp_path / "more", {"cats": count, "dogs": count}, size=8, seed=1)
    for path in more.rglob("*.png"):
        path.rename(folder / path.parent.name / f"new_{path.name}")


def test_new_images_are_not_added_and_resume_keeps_the_recorded_split(folder, tmp_path):
    from kfactory.data.pipeline import make_splits

    run_dir, cfg = new_run(tmp_path), folder_config(folder)
    drawn = make_splits(cfg, run_dir)
    add_images(folder, tmp_path, 10)
    resumed = make_splits(folder_config(folder, "resume=true"), run_dir)
    assert not resumed.drawn and split_files(resumed) == split_files(drawn)
    assert len(list_folder(str(folder)).paths) == 41 and len(resumed.source.paths) == 20


def test_a_run_keeps_the_settings_its_split_was_drawn_with(folder, tmp_path):
    from kfactory.data.pipeline import make_splits

    run_dir = new_run(tmp_path)
    make_splits(folder_config(folder), run_dir)
    with pytest.raises(ConfigError, match=r"^data\.test_split=0\.3 is not accepted: 0\.1, as the split recorded in"):
        make_splits(folder_config(folder, "data.test_split=0.3"), run_dir)
    with pytest.raises(ConfigError, match=r"^seed=7 is not accepted"):
        make_splits(folder_config(folder, "seed=7"), run_dir)


def test_a_gone_or_changed_file_is_refused_in_one_line_naming_what_changed(folder, tmp_path):
    from kfactory.data.pipeline import make_splits

    run_dir, cfg = new_run(tmp_path), folder_config(folder)
    make_splits(cfg, run_dir)
    test_files = pd.read_csv(run_dir / SPLITS_FILE).query("split == 'test'")["file"].tolist()
    Path(test_files[0]).unlink()
    record = read_split(run_dir).only("test")
    with pytest.raises(ConfigError) as refused:
        check_files(record, cfg.data)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"data.path={folder} is not accepted: the test images")
    assert f"1 ({test_files[0]}) gone, 0 changed" in message and "data.on_changed=use_remaining" in message
    assert "to use the other 1" in message
    Path(test_files[1]).write_bytes(b"edited")
    with pytest.raises(ConfigError, match=r"1 \(.*\) gone, 1 \(.*\) changed .*none remain"):
        check_files(record, cfg.data)


def test_use_remaining_leaves_out_the_gone_and_changed_files_and_says_so(folder, tmp_path, caplog):
    from kfactory.data.pipeline import make_splits

    run_dir = new_run(tmp_path)
    drawn = split_files(make_splits(folder_config(folder, "data.val_split=0.2"), run_dir))
    Path(drawn["train"][0]).unlink()
    Path(drawn["val"][0]).touch()  # a newer mtime: changed
    os.utime(drawn["val"][0], ns=(1, 1))
    with caplog.at_level(logging.WARNING):
        read = split_files(
            make_splits(folder_config(folder, "data.val_split=0.2", "data.on_changed=use_remaining"), run_dir)
        )
    assert read["train"] == drawn["train"][1:] and read["val"] == drawn["val"][1:] and read["test"] == drawn["test"]
    assert "data.on_changed=use_remaining: of the 20 train/val/test images recorded in" in caplog.text
    assert "1 (" in caplog.text and "using the other 18" in caplog.text


def test_a_record_cut_short_is_refused_and_one_without_its_fingerprint_is_not_read(folder, tmp_path):
    from kfactory.data.pipeline import make_splits

    run_dir = new_run(tmp_path)
    make_splits(folder_config(folder), run_dir)
    lines = (run_dir / SPLITS_FILE).read_text().splitlines(keepends=True)
    (run_dir / SPLITS_FILE).write_text("".join(lines[:-2]))
    with pytest.raises(ConfigError, match=r"splits\.csv=inconsistent is not accepted: the 21 rows .*\(19 rows"):
        read_split(run_dir)
    (run_dir / FINGERPRINT_FILE).unlink()  # a write cut short before its fingerprint: no record
    assert read_split(run_dir) is None


def test_each_fold_reads_the_split_fold_0_recorded(folder, tmp_path):
    from kfactory.data.pipeline import make_splits

    folds = 3
    cfgs = [folder_config(folder, f"data.folds={folds}", f"data.fold={k}", "data.test_split=0.2") for k in range(folds)]
    first = make_splits(cfgs[0], new_run(tmp_path, "fold_0"))
    listed = list_folder(str(folder))  # the 20 readable files fold_indices dealt, in listing order
    add_images(folder, tmp_path, 4)
    reads = [first]
    for fold in range(1, folds):
        share_with_fold(tmp_path / "fold_0", tmp_path / f"fold_{fold}", fold)
        reads.append(make_splits(cfgs[fold], tmp_path / f"fold_{fold}"))
    assert all(not splits.drawn for splits in reads[1:])
    files = [split_files(splits) for splits in reads]
    assert all(f["test"] == files[0]["test"] for f in files)
    vals = [set(f["val"]) for f in files]
    assert set().union(*vals) == set(files[0]["train"]) | vals[0] and sum(map(len, vals)) == 16  # a partition
    first_files = [p for p in listed.paths if not p.endswith("broken.png")]
    labels = np.asarray([0 if "/cats/" in p else 1 for p in first_files])
    for fold in range(folds):
        expected = {os.path.abspath(first_files[i]) for i in fold_indices(labels, folds, fold, 0.2, cfgs[0].seed)[1]}
        assert vals[fold] == expected
    fold_rows = pd.read_csv(tmp_path / "fold_2" / SPLITS_FILE)
    assert set(fold_rows.loc[fold_rows["split"] == "val", "fold"]) == {2}  # the file says what fold 2 used


def test_file_stats_and_the_fingerprint_read_only_the_directory(tmp_path):
    files = [tmp_path / f"{i}.bin" for i in range(3)]
    for i, path in enumerate(files):
        path.write_bytes(b"x" * i)  # not images: nothing is decoded
    names = [str(p) for p in files]
    sizes, mtimes = file_stats([*names, str(tmp_path / "gone.png")])
    assert sizes.tolist() == [0, 1, 2, -1] and mtimes[-1] == -1 and mtimes[0] == files[0].stat().st_mtime_ns
    digest, _, _ = data_fingerprint(names)
    assert digest == data_fingerprint(names)[0]
    os.utime(files[1], ns=(5, 5))
    assert data_fingerprint(names)[0] != digest


def test_label_sets_are_written_as_names_and_read_back_as_multi_hot():
    names = ["cat", "dog", "outdoor"]
    hot = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], np.float32)
    written = label_names(hot, names, ";")
    assert written.tolist() == ["cat;outdoor", "", "dog"]
    meta = {"class_names": names, "multilabel": True, "label_separator": ";"}
    np.testing.assert_array_equal(label_values(pd.Series(written), meta), hot)
    single = {"class_names": names, "multilabel": False}
    assert label_values(pd.Series(["dog", "cat"]), single).tolist() == [1, 0]


def test_a_100k_row_record_is_read_and_checked_in_seconds(tmp_path, monkeypatch):
    count = 100_000
    files = [f"/data/photos/class_{i % 100}/{i:07d}.jpg" for i in range(count)]
    sizes, mtimes = np.arange(count, dtype=np.int64) + 5000, np.arange(count, dtype=np.int64) * 1000 + 10**18
    rows = pd.DataFrame(
        {
            "file": files,
            "label": [f"class_{i % 100}" for i in range(count)],
            "split": np.where(np.arange(count) % 10 == 0, "test", "train"),
            "fold": -1,
            "size": sizes,
            "mtime_ns": mtimes,
        }
    )
    meta = {"format": 1, "kind": "files", "files": count, "fingerprint": split_record.fingerprint(files, sizes, mtimes)}
    meta.update(class_names=[f"class_{i}" for i in range(100)], multilabel=False, label_separator=";")
    write_split(tmp_path, SplitRecord(rows, {**meta, "settings": {}}))
    now = sizes.copy(), mtimes.copy()
    now[1][7] += 1  # one file touched since

    def stats(paths):
        assert len(paths) == count
        return now

    monkeypatch.setattr(split_record, "file_stats", stats)
    data = compose_config(["data=folder", "data.path=/data/photos", "data.on_changed=use_remaining"]).data
    started = time.perf_counter()
    record = check_files(read_split(tmp_path), data)
    source, indices, _ = split_record.recorded_source(record)
    seconds = time.perf_counter() - started
    assert len(source.paths) == count - 1 and len(indices["test"]) == count // 10 and files[7] not in source.paths
    assert source.labels[:3].tolist() == [0, 1, 2]
    assert seconds < 10, f"{seconds:.1f} s to read and check 100,000 rows"


def test_an_in_memory_row_that_differs_or_is_gone_is_found_by_its_digest():
    from kfactory.data.sources import load_digits, split_indices
    from kfactory.data.split_record import record_split

    digits = load_digits()
    data = compose_config(["model.input_size=[32,32]"]).data
    indices = dict(zip(SPLITS, split_indices(digits.labels, 0.1, 0.1, seed=0), strict=True))
    record = record_split(digits, [], digits, indices, data, seed=0)
    assert check_files(record, data, digits) is record  # loaded again, unchanged
    test_rows = record.rows.loc[record.rows["split"] == "test", "file"].astype(int).tolist()
    digits.images[test_rows[0], 0, 0, 0] ^= 1  # one pixel of one test image
    fewer = type(digits)(digits.class_names, digits.labels[:-1], images=digits.images[:-1])  # the last row gone
    changed = rf"1 \({test_rows[0]}\) changed \(pixels or label\)"
    with pytest.raises(ConfigError, match=rf"^data\.source=digits .* of 179, 0 gone, {changed}; .* the other 178$"):
        check_files(record.only("test"), data, digits)
    with pytest.raises(ConfigError, match=rf"of 1797, 1 \({len(digits) - 1}\) gone, {changed}"):
        check_files(record, data, fewer)
