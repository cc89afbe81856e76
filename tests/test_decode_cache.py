"""The shared decode cache: one decode for every run, memory within a budget, builds that are safe to race or kill."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from kfactory.errors import ConfigError
from tests.conftest import ROOT, compose_config, write_image_folder, write_multilabel_digits


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images", {"cats": 12, "dogs": 12}, size=20, fmt="jpg")


def folder_cfg(folder: Path, cache_dir: Path, *overrides: str):
    return compose_config(
        ["data=folder", f"data.path={folder}", f"data.cache_dir={cache_dir}", "model.input_size=[16,16]", *overrides]
    )


def images_by_index(splits, name: str) -> dict[int, np.ndarray]:
    """Each image of split ``name``, keyed by its index, in the order the pipeline yields them."""
    images = np.concatenate([x.numpy() for x, _ in getattr(splits, name)])
    return dict(zip(splits.indices[name].tolist(), images, strict=True))


def test_a_small_budget_streams_from_disk_and_gives_the_same_images_as_memory(folder, tmp_path):
    from kfactory.data.pipeline import make_splits

    cache = tmp_path / "cache"
    in_memory = make_splits(folder_cfg(folder, cache, "data.cache_budget_gb=1"))
    streamed = make_splits(folder_cfg(folder, cache, "data.cache_budget_gb=0"))
    assert in_memory.source.decoded.pixels is not None and streamed.source.decoded.pixels is None
    for name in ("val", "test"):  # in order: each image beside its index
        assert sorted(in_memory.indices[name]) == sorted(streamed.indices[name])
        memory_images, streamed_images = images_by_index(in_memory, name), images_by_index(streamed, name)
        assert all(np.array_equal(memory_images[i], streamed_images[i]) for i in memory_images)
    shuffled = [sorted(x.tobytes() for b, _ in s.train for x in b.numpy()) for s in (in_memory, streamed)]
    assert len(shuffled[0]) == len(in_memory.indices["train"]) and shuffled[0] == shuffled[1]
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1  # one entry served both


def image_label_pairs(ds) -> list[tuple[bytes, bytes]]:
    return [(x.tobytes(), y.tobytes()) for xs, ys in ds for x, y in zip(xs.numpy(), ys.numpy(), strict=True)]


def test_label_sets_streamed_from_disk_keep_each_images_labels(tmp_path):
    from kfactory.data.pipeline import make_splits

    csv = write_multilabel_digits(tmp_path / "data", count=48, size=16)
    base = ["data=csv", f"data.csv={csv}", f"data.cache_dir={tmp_path / 'cache'}", "model.input_size=[16,16]"]
    splits = [make_splits(compose_config([*base, f"data.cache_budget_gb={gb}"])) for gb in (1, 0)]
    assert splits[0].source.decoded.pixels is not None and splits[1].source.decoded.pixels is None
    for name in ("train", "val", "test"):
        pairs = [sorted(image_label_pairs(getattr(s, name))) for s in splits]
        assert len(pairs[0]) == len(splits[0].indices[name]) and pairs[0] == pairs[1]
        assert all(np.frombuffer(y, np.float32).shape == (3,) for _, y in pairs[0])  # even, ge5, odd: multi-hot


def test_the_default_keeps_what_fits_and_streams_what_does_not(folder, tmp_path, monkeypatch):
    from kfactory.data import cache_store
    from kfactory.data.pipeline import make_splits

    need = cache_store.image_bytes(24, (16, 16))
    monkeypatch.setattr(cache_store, "available_memory", lambda: 4 * need)  # half of it is the budget: fits
    assert make_splits(folder_cfg(folder, tmp_path / "cache")).source.decoded.pixels is not None
    monkeypatch.setattr(cache_store, "available_memory", lambda: need)  # half of it is too little
    assert make_splits(folder_cfg(folder, tmp_path / "cache")).source.decoded.pixels is None


def test_memory_that_cannot_fit_is_refused_in_one_line_before_anything_is_decoded(folder, tmp_path):
    from kfactory.config.validate import validate

    memory, tiny = "data.cache=memory", "data.cache_budget_gb=0.00001"
    cfg = folder_cfg(folder, tmp_path / "cache", memory, tiny, "model.input_size=[32,32]", "model.weights=null")
    with pytest.raises(ConfigError) as refused:
        validate(cfg)
    message = str(refused.value)
    assert message.startswith("data.cache=memory is not accepted: auto, disk or none: 24 images at 32x32 need")
    assert "data.cache_budget_gb=1e-05" in message and "\n" not in message
    assert not (tmp_path / "cache").exists()


def test_a_second_run_reads_the_cache_without_decoding_and_a_changed_file_makes_a_new_entry(folder, tmp_path, caplog):
    from kfactory.data.pipeline import make_splits

    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="kfactory.data.cache_build"):
        first = make_splits(folder_cfg(folder, cache))
        assert "Decoding 24 images once at 16x16" in caplog.text
        caplog.clear()
        again = make_splits(folder_cfg(folder, cache))
        assert "Decoding" not in caplog.text and again.source.decoded.entry.path == first.source.decoded.entry.path
        changed = next((folder / "cats").iterdir())
        changed.write_bytes((folder / "dogs" / sorted(os.listdir(folder / "dogs"))[0]).read_bytes())
        caplog.clear()
        third = make_splits(folder_cfg(folder, cache))
    assert "Decoding 24 images once" in caplog.text
    assert third.source.decoded.entry.path != first.source.decoded.entry.path


def test_unreadable_files_are_found_by_the_build_and_skipped_by_every_later_run(folder, tmp_path, caplog):
    from kfactory.data.image_check import SKIPPED_FILE
    from kfactory.data.pipeline import make_splits

    (folder / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    cache = tmp_path / "cache"
    for run in ("first", "second"):
        splits = make_splits(folder_cfg(folder, cache), tmp_path / run)
        assert splits.skipped == [str(folder / "cats" / "broken.jpg")]
        assert (tmp_path / run / SKIPPED_FILE).read_text().split() == splits.skipped
        assert sum(map(len, splits.indices.values())) == 24


BUILD = textwrap.dedent(
    """
    import logging, sys, time
    from pathlib import Path
    from kfactory.data import cache_build
    from kfactory.data.sources import list_folder

    logging.basicConfig(level=logging.INFO)
    folder, root, pause = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    cache_build.WRITE_BATCH = 4
    write = cache_build._next_shard
    def slow_next_shard(*args):  # time to be killed, or raced, between shards
        time.sleep(pause)
        return write(*args)
    cache_build._next_shard = slow_next_shard
    cache_build.SHARD_BYTES = 1
    entry, _ = cache_build.ensure_entry(list_folder(folder).paths, (16, 16), root, folder)
    print("ENTRY", entry.path)
    """
)


def start_build(folder: Path, root: Path, pause: float) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", BUILD, str(folder), str(root), str(pause)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def entry_content(entry_dir: Path) -> tuple[bytes, bytes]:
    """The records of an entry, whatever its shard sizes, and their order."""
    shards = sorted(entry_dir.glob("images-*.bin"))
    return b"".join(p.read_bytes() for p in shards), (entry_dir / "order.npy").read_bytes()


@pytest.mark.slow  # two processes that import TensorFlow
def test_two_processes_building_one_cache_publish_one_identical_entry(folder, tmp_path):
    from kfactory.data.cache_build import ensure_entry
    from kfactory.data.sources import list_folder

    root = tmp_path / "shared"
    builders = [start_build(folder, root, 0.2) for _ in range(2)]
    outputs = [b.communicate(timeout=300)[0] for b in builders]
    assert [b.returncode for b in builders] == [0, 0], outputs
    published = {line.split()[1] for out in outputs for line in out.splitlines() if line.startswith("ENTRY")}
    assert len(published) == 1
    assert sum("Decoding 24 images once" in out for out in outputs) == 1, outputs  # the other one waited
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith((".lock", ".holder"))) == [
        Path(published.pop()).name
    ]
    alone, _ = ensure_entry(list_folder(str(folder)).paths, (16, 16), tmp_path / "alone", str(folder))
    assert entry_content(next(p for p in root.iterdir() if p.is_dir())) == entry_content(alone.path)


@pytest.mark.slow  # a process that imports TensorFlow
def test_a_killed_build_is_never_read_and_the_next_build_replaces_it(folder, tmp_path):
    from kfactory.data.cache_build import canonical_files, ensure_entry
    from kfactory.data.cache_store import entry_key, open_entry
    from kfactory.data.sources import list_folder

    root, paths = tmp_path / "shared", list_folder(str(folder)).paths
    builder = start_build(folder, root, 2.0)
    deadline = time.time() + 120
    while not list(root.glob(".*.tmp-*/images-00001.bin")) and time.time() < deadline:
        time.sleep(0.05)
    builder.send_signal(signal.SIGKILL)
    builder.wait()
    files = canonical_files(paths).tolist()
    key = entry_key(files, (16, 16))
    assert list(root.glob(".*.tmp-*")) and open_entry(root, key) is None  # half-built, and not readable
    entry, _ = ensure_entry(paths, (16, 16), root, str(folder))
    assert entry.manifest["readable"] == 24 and not list(root.glob(".*.tmp-*"))


@pytest.mark.slow  # writes 100,000 files
def test_a_hundred_thousand_row_csv_is_listed_and_keyed_in_seconds(tmp_path):
    from kfactory.data.cache_store import entry_key
    from kfactory.data.sources import read_csv

    images = tmp_path / "images"
    images.mkdir()
    names = [f"{i:06d}.jpg" for i in range(100_000)]
    for name in names:
        os.close(os.open(images / name, os.O_CREAT | os.O_WRONLY))
    rows = "".join(f"images/{n},{'cat' if i % 2 else 'dog'}\n" for i, n in enumerate(names))
    (tmp_path / "labels.csv").write_text("path,label\n" + rows)
    started = time.perf_counter()
    source = read_csv(str(tmp_path / "labels.csv"), "path", "label")
    key = entry_key(source.paths, (224, 224))
    seconds = time.perf_counter() - started
    assert len(source) == 100_000 and key.startswith("224x224-100000-")
    assert seconds < 15, f"{seconds:.1f} s"  # about 1 s here; generous for slow shared disks


def test_the_cache_command_lists_and_deletes_entries(folder, tmp_path, capsys):
    from kfactory.data.cache_build import ensure_entry
    from kfactory.data.cache_store import main
    from kfactory.data.sources import list_folder

    root = tmp_path / "cache"
    entry, _ = ensure_entry(list_folder(str(folder)).paths, (16, 16), root, str(folder))
    assert main(["--cache-dir", str(root), "list"]) == 0
    listed = capsys.readouterr().out
    assert f"{root}: 1 entries" in listed and entry.key in listed and str(folder) in listed
    assert main(["--cache-dir", str(root), "delete", "no-such-key"]) == 2 and entry.path.is_dir()
    assert main(["--cache-dir", str(root), "delete", entry.key]) == 0 and not entry.path.exists()
    entry, _ = ensure_entry(list_folder(str(folder)).paths, (16, 16), root, str(folder))
    next(entry.path.glob("images-*.bin")).unlink()  # damaged: listed as such, and deleted like an entry
    (root / "my_notes").mkdir()  # a folder of the user's in a shared cache_dir: not an entry, never touched
    capsys.readouterr()
    assert main(["--cache-dir", str(root), "list"]) == 0
    listed = capsys.readouterr().out
    assert f"{root}: 0 entries\n{entry.key}  damaged: its images-00000.bin is missing" in listed
    assert "my_notes" not in listed
    assert main(["--cache-dir", str(root), "delete", "--all"]) == 0 and not entry.path.exists()
    assert (root / "my_notes").is_dir()


def test_an_entry_opened_by_its_key_serves_a_subset_of_its_files(folder, tmp_path):
    import tensorflow as tf

    from kfactory.data.cache_build import DecodedImages, ensure_entry, open_built
    from kfactory.data.image_check import read_image
    from kfactory.data.sources import list_folder

    paths = list_folder(str(folder)).paths
    entry, files = ensure_entry(paths, (16, 16), tmp_path / "cache", str(folder))
    opened, listed = open_built(tmp_path / "cache", entry.key)
    assert opened.path == entry.path and listed.tolist() == files.tolist()
    subset = paths[::5]
    for in_memory in (False, True):
        decoded = DecodedImages(opened, listed, subset, in_memory=in_memory)
        ds = decoded.batches(np.arange(len(subset)), np.arange(len(subset)), False, 1, 0, 2)
        got = {int(y): x for images, labels in ds for x, y in zip(images.numpy(), labels.numpy(), strict=True)}
        assert sorted(got) == list(range(len(subset)))
        assert all(np.array_equal(got[i], read_image(tf.constant(p), (16, 16)).numpy()) for i, p in enumerate(subset))
    assert open_built(tmp_path / "cache", "no-such-key") is None


def entries(root: Path) -> list[str]:
    """The published entries under ``root`` (locks and build folders start with a dot)."""
    return [p.name for p in root.iterdir() if not p.name.startswith(".")] if root.exists() else []


def test_no_room_on_the_disk_reads_the_files_and_memory_or_disk_is_refused_before_decoding(
    folder, tmp_path, monkeypatch, caplog
):
    from kfactory.config.validate import validate
    from kfactory.data import cache_store
    from kfactory.data.pipeline import make_splits

    cache, size = tmp_path / "cache", "model.input_size=[32,32]"  # the smallest size validate accepts
    monkeypatch.setattr(cache_store, "free_bytes", lambda root: 100 * 2**20)  # less than the headroom alone
    with caplog.at_level(logging.WARNING, logger="kfactory.data.cache_build"):
        splits = make_splits(folder_cfg(folder, cache, size), tmp_path / "run")
    assert "No room for the decode cache: 24 images at 32x32 need 0.27 GB; 0.10 GB is free under" in caplog.text
    assert splits.source.decoded is None and not entries(cache)  # the files, decoded as data.cache=none does
    assert sum(len(x) for x, _ in splits.train) == len(splits.indices["train"])
    for mode in ("disk", "memory"):
        with pytest.raises(ConfigError) as refused:
            validate(folder_cfg(folder, cache, f"data.cache={mode}", size, "model.weights=null"))
        message = str(refused.value)
        assert message.startswith(f"data.cache_dir={cache} is not accepted: a folder on a disk with room for the")
        assert "24 images at 32x32 need 0.27 GB; 0.10 GB is free" in message and "data.cache=none" in message
        assert "\n" not in message and not entries(cache)
    monkeypatch.undo()  # room again: the entry is built, and then needs none
    built = make_splits(folder_cfg(folder, cache, "data.cache=disk", size)).source.decoded.entry
    monkeypatch.setattr(cache_store, "free_bytes", lambda root: 0)
    cfg = validate(folder_cfg(folder, cache, "data.cache=disk", size, "model.weights=null"))
    assert make_splits(cfg).source.decoded.entry.path == built.path
    with pytest.raises(ConfigError) as refused:  # another size: the entry there is named, with how to list it
        validate(folder_cfg(folder, cache, "data.cache=disk", "model.input_size=[40,40]", "model.weights=null"))
    listing = str(refused.value).split(", where 1 earlier entry takes 0.00 GB (")[1].split(")")[0]
    assert listing == f"python -m kfactory.data.cache_store --cache-dir {cache} list"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    listed = subprocess.run([sys.executable, *listing.split()[1:]], capture_output=True, text=True, env=env)
    assert listed.returncode == 0 and built.key in listed.stdout, listed.stderr


def test_a_disk_that_fills_during_the_build_leaves_nothing_and_the_run_reads_the_files(folder, tmp_path, monkeypatch):
    import errno

    from kfactory.data import cache_build
    from kfactory.data.pipeline import make_splits

    def full(out, folder, shards):
        if shards:  # the first shard is written; the disk fills at the second
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(out, folder, shards)

    write = cache_build._next_shard
    monkeypatch.setattr(cache_build, "WRITE_BATCH", 4)
    monkeypatch.setattr(cache_build, "SHARD_BYTES", 1)
    monkeypatch.setattr(cache_build, "_next_shard", full)
    cache = tmp_path / "cache"
    splits = make_splits(folder_cfg(folder, cache), tmp_path / "run")
    assert splits.source.decoded is None and sum(map(len, splits.indices.values())) == 24
    assert not entries(cache) and not list(cache.glob(".*.tmp-*"))  # the half-written build is gone
    with pytest.raises(ConfigError, match=r"^data.cache_dir=.* is not accepted: a folder on a disk with room"):
        make_splits(folder_cfg(folder, cache, "data.cache=disk"), tmp_path / "run2")
    assert not list(cache.glob(".*.tmp-*"))


@pytest.mark.parametrize("harm", ["truncate", "delete_order", "garble_manifest"])
@pytest.mark.parametrize("budget", ["1", "0"])  # mapped, streamed
def test_a_damaged_entry_is_never_read_and_the_next_run_decodes_the_files_again(folder, tmp_path, caplog, harm, budget):
    from kfactory.data.cache_store import MANIFEST, ORDER_FILE
    from kfactory.data.pipeline import make_splits

    cache = tmp_path / "cache"
    first = make_splits(folder_cfg(folder, cache, f"data.cache_budget_gb={budget}"))
    expected = {name: images_by_index(first, name) for name in ("val", "test")}
    entry = first.source.decoded.entry.path
    if harm == "truncate":  # a shard cut short (a partial copy, a failing disk)
        shard = next(entry.glob("images-*.bin"))
        shard.write_bytes(shard.read_bytes()[:-100])
    elif harm == "delete_order":
        (entry / ORDER_FILE).unlink()
    else:
        (entry / MANIFEST).write_text("{not json")
    with caplog.at_level(logging.INFO, logger="kfactory.data.cache_build"):
        again = make_splits(folder_cfg(folder, cache, f"data.cache_budget_gb={budget}"))
    assert f"The decode cache entry {entry} is damaged (its " in caplog.text
    assert "Decoding 24 images once at 16x16" in caplog.text
    assert entries(cache) == [entry.name] and again.source.decoded.entry.path == entry
    for name, images in expected.items():
        got = images_by_index(again, name)
        assert all(np.array_equal(images[i], got[i]) for i in images)


def test_an_entry_cut_while_a_run_streams_it_stops_the_run_in_one_line_naming_the_entry(folder, tmp_path):
    from kfactory.data.pipeline import make_splits, splits_read_whole
    from kfactory.errors import RunStopped

    splits = make_splits(folder_cfg(folder, tmp_path / "cache", "data.cache=disk"))
    entry = splits.source.decoded.entry.path
    for shard in entry.glob("images-*.bin"):  # cut after the run opened the entry
        shard.write_bytes(b"")
    cut_short = f"^The decode cache entry {entry} came up short"
    with pytest.raises(RunStopped, match=cut_short) as stopped, splits_read_whole(splits, tmp_path / "run"):
        list(splits.val)
    assert stopped.value.resume_with == []  # resume=true alone: the resumed run rebuilds the entry
