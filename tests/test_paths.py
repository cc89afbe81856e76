"""Durable replacement: the new file's data and the rename reach the disk, in that order."""

from __future__ import annotations

import os

from kfactory import paths
from kfactory.model.checkpoint import write_json_atomic


def test_a_file_is_synced_before_its_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source, target):
        events.append(("replace", str(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"val_accuracy": 0.5})
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1] == str(tmp_path / f".metrics.json.{os.getpid()}.tmp")  # the finished data, before the rename
    assert events[2][1] == str(tmp_path)  # the directory entry, after it
    assert target.read_text() == '{\n  "val_accuracy": 0.5\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_directory_that_refuses_fsync_still_gets_the_file(tmp_path, monkeypatch):
    def refuse_directories(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "fsync", refuse_directories)
    (tmp_path / "new").write_text("new")
    paths.replace_durably(tmp_path / "new", tmp_path / "old")
    assert (tmp_path / "old").read_text() == "new"
