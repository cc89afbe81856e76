"""task=predict: the CSV, its accuracy, annotated images, unreadable files, SavedModel input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import PROB_ATOL, assert_same_top_labels, compose_config
from tests.tiny_model import SIZE


def run_predict(run_dir: Path, ckpt: Path, source: Path, *extra: str) -> pd.DataFrame:
    from kfactory.use.predict import predict

    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = compose_config(["task=predict", f"ckpt_path={ckpt}", f"predict.input={source}", *extra])
    predict(cfg, run_dir)
    return pd.read_csv(run_dir / "predictions.csv")


@pytest.fixture(scope="module")
def annotated_run(trained, tmp_path_factory) -> tuple[Path, pd.DataFrame, float]:
    """One labelled, annotated prediction run over the whole folder: (run dir, CSV, returned accuracy)."""
    from kfactory.use.predict import predict

    run_dir, images = trained
    out = tmp_path_factory.mktemp("annotated_run")
    overrides = ["predict.top_k=5", "predict.annotate=true", "data.batch_size=10"]
    cfg = compose_config(["task=predict", f"ckpt_path={run_dir}", f"predict.input={images}", *overrides])
    accuracy = predict(cfg, out)
    return out, pd.read_csv(out / "predictions.csv"), accuracy


@pytest.mark.numeric
def test_csv_has_top_k_columns_and_the_folder_labels(annotated_run, trained):
    table = annotated_run[1]
    # top_k=5 is capped at the two classes the model knows
    assert list(table.columns) == ["file", "label_1", "prob_1", "label_2", "prob_2", "true_label", "correct"]
    assert len(table) == 24
    assert (table["true_label"] == [Path(f).parent.name for f in table["file"]]).all()
    assert set(table["label_1"]) <= {"cats", "dogs"}
    np.testing.assert_allclose(table["prob_1"] + table["prob_2"], 1.0, atol=1e-5)
    assert table["prob_1"].std() > 0.01  # the model tells images apart, so comparisons below mean something
    assert (table["prob_1"] >= table["prob_2"]).all()


@pytest.mark.numeric
def test_accuracy_is_top_1_against_the_folder_labels(annotated_run, trained):
    import keras

    run_dir, _ = trained
    _, table, accuracy = annotated_run
    model = keras.models.load_model(run_dir / "model.keras")
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) for f in table["file"]])
    # in the batches predict used (data.batch_size=10): the same kernels, so even a near tie agrees
    expected = np.array(["cats", "dogs"])[model.predict(pixels, batch_size=10, verbose=0).argmax(-1)]
    truth = [Path(f).parent.name for f in table["file"]]
    assert (table["label_1"] == expected).all()
    assert (table["correct"] == (expected == truth)).all()
    assert accuracy == pytest.approx(np.mean(expected == truth))


def test_annotated_copy_has_text_drawn_over_the_input(annotated_run, trained):
    out, table, _ = annotated_run
    source = Path(table["file"][0])
    copy = out / "annotated" / source.parent.name / source.name
    assert copy.is_file()
    original = np.asarray(Image.open(source).convert("RGB"))
    annotated = np.asarray(Image.open(copy).convert("RGB"))
    scale = annotated.shape[0] // SIZE  # small images are enlarged with nearest-neighbour
    assert scale > 1
    enlarged = original.repeat(scale, 0).repeat(scale, 1)
    # The label box sits top-left; the far corner is the input, untouched.
    corner = slice(-scale * 4, None)
    np.testing.assert_array_equal(annotated[corner, corner], enlarged[-scale * 4 :, -scale * 4 :][: len(annotated)])
    assert np.abs(annotated[:40, :80].astype(int) - enlarged[:40, :80].astype(int)).max() > 50


def test_contact_sheet_tiles_the_first_images(annotated_run):
    out = annotated_run[0]
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.size == (8 * 192, 3 * 192)  # 24 images, 8 a row
        assert np.asarray(sheet.convert("L")).std() > 10


@pytest.mark.slow  # predicts a folder twice
@pytest.mark.numeric
def test_unreadable_files_are_skipped_without_shifting_rows(trained, tmp_path):
    run_dir, images = trained
    flat = tmp_path / "mixed"
    flat.mkdir()
    readable = sorted(images.glob("*/*.png"))[::4]
    for i, path in enumerate(readable):
        shutil.copy(path, flat / f"{i:02d}_ok.png")
        (flat / f"{i:02d}_zero.png").write_bytes(b"")  # between every two good ones
    (flat / "99_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    clean = run_predict(tmp_path / "clean", run_dir, images)
    mixed = run_predict(tmp_path / "mixed_run", run_dir, flat, "data.batch_size=4")
    assert [Path(f).name for f in mixed["file"]] == [f"{i:02d}_ok.png" for i in range(len(readable))]
    expected = clean.set_index(clean["file"].map(lambda f: Path(f).name)).loc[[p.name for p in readable]]
    # batches of 4 here, one of 24 there: other kernels, so float32-close, not equal
    np.testing.assert_allclose(mixed["prob_1"], expected["prob_1"], atol=PROB_ATOL)
    assert_same_top_labels(expected[["prob_1", "prob_2"]], expected["label_1"], mixed["label_1"])
    skipped = (tmp_path / "mixed_run" / "unreadable.txt").read_text().split()
    assert sorted(Path(s).name for s in skipped) == sorted(
        [f"{i:02d}_zero.png" for i in range(len(readable))] + ["99_corrupt.jpg"]
    )


@pytest.mark.slow  # three predict runs
@pytest.mark.numeric
def test_a_single_image_and_a_labelled_csv(trained, tmp_path):
    run_dir, images = trained
    one = sorted(images.glob("dogs/*.png"))[0]
    single = run_predict(tmp_path / "one", run_dir, one)
    assert list(single.columns) == ["file", "label_1", "prob_1", "label_2", "prob_2"]
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"path": [str(one)], "label": ["dogs"]}).to_csv(csv, index=False)
    labelled = run_predict(tmp_path / "csv", run_dir, csv)
    assert labelled["true_label"].tolist() == ["dogs"]
    assert labelled["prob_1"][0] == pytest.approx(single["prob_1"][0], abs=1e-6)


def test_hidden_folders_are_not_class_folders(tmp_path):
    from kfactory.use.predict import list_inputs

    for name in ("a.png", "b.png", ".thumbnails/c.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    files, labels = list_inputs(str(tmp_path))
    assert sorted(Path(f).name for f in files) == ["a.png", "b.png"] and labels is None


def test_csv_paths_are_taken_from_the_csv_folder(tmp_path):
    from kfactory.use.predict import list_inputs

    (tmp_path / "list.csv").write_text(f"path,label\nimg/a.png,cat\n{tmp_path / 'b.png'},dog\n")
    files, labels = list_inputs(str(tmp_path / "list.csv"))
    assert files == [str(tmp_path / "img" / "a.png"), str(tmp_path / "b.png")] and labels == ["cat", "dog"]
