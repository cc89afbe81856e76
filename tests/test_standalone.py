"""A saved model.keras stands alone: plain Keras, in a process without kfactory, predicts as task=predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import PROB_ATOL, compose_config, run_cli
from tests.tiny_model import SIZE, write_images

# Runs in a fresh interpreter, from a folder where kfactory cannot be imported:
# any attempt to import it (by us or by Keras while deserialising) fails.
LOAD_WITHOUT_KFACTORY = """
import json, sys
class NoKfactory:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "kfactory":
            raise ImportError("kfactory must not be needed to use a saved model")
sys.meta_path.insert(0, NoKfactory())
import keras, numpy as np
from PIL import Image
model_path, files = sys.argv[1], json.loads(sys.stdin.read())
model = keras.models.load_model(model_path)  # safe_mode=True: no Lambda, no custom classes
pixels = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype="float32") for f in files])
assert not any(m.split(".")[0] == "kfactory" for m in sys.modules)
print(json.dumps(model.predict(pixels, verbose=0).tolist()))
"""


def probabilities_without_kfactory(model_path: Path, files: list[str], cwd: Path) -> np.ndarray:
    """Class probabilities from ``keras.models.load_model`` in a subprocess that never imports kfactory."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_KFACTORY, str(model_path)],
        input=json.dumps(files),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return np.asarray(json.loads(result.stdout.strip().splitlines()[-1]))


def csv_probabilities(table: pd.DataFrame, class_names: list[str]) -> np.ndarray:
    """Per-class probabilities back from the top-k columns of predictions.csv (top_k >= classes)."""
    k = sum(c.startswith("label_") for c in table.columns)
    rows = [{row[f"label_{r}"]: row[f"prob_{r}"] for r in range(1, k + 1)} for row in table.to_dict("records")]
    return np.asarray([[row[name] for name in class_names] for row in rows])


def assert_standalone_matches_predict(model_path: Path, table: pd.DataFrame, cwd: Path) -> None:
    expected = csv_probabilities(table, ["cats", "dogs"])
    assert expected[:, 0].std() > 0.01  # outputs vary between images: the comparison means something
    got = probabilities_without_kfactory(model_path, list(table["file"]), cwd)
    # another process, another pipeline (PIL here, tf.data in predict): float32-close
    np.testing.assert_allclose(got, expected, atol=PROB_ATOL, rtol=0)


@pytest.mark.slow  # a second process that imports TensorFlow
@pytest.mark.numeric
def test_model_keras_loads_and_predicts_without_kfactory(trained, tmp_path):
    from kfactory.use.predict import predict

    run_dir, images = trained
    model_path = run_dir / "model.keras"
    (tmp_path / "predict").mkdir()
    cfg = compose_config(["task=predict", f"ckpt_path={model_path}", f"predict.input={images}"])
    predict(cfg, tmp_path / "predict")
    table = pd.read_csv(tmp_path / "predict" / "predictions.csv")
    assert_standalone_matches_predict(model_path, table, cwd=tmp_path)


@pytest.mark.slow
def test_cli_trained_model_loads_and_predicts_without_kfactory(tmp_path):
    images = write_images(tmp_path / "images")
    train = [
        "data=folder",
        f"data.path={images}",
        "model=mobilenet",
        "model.weights=null",
        f"model.input_size={SIZE}",
        # One step barely moves BatchNormalization statistics at the usual momentum,
        # leaving every prediction at 0.5; momentum 0 takes them from that step.
        "model.bn_momentum=0.0",
        "trainer=fast",
        "trainer.verbose=0",
        "trainer.epochs=1",
        "trainer.steps_per_epoch=1",
        "trainer.validation_steps=1",
        "data.batch_size=8",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    trained = run_cli(train)
    assert trained.returncode == 0, trained.stderr[-3000:]
    predicted = run_cli(
        ["task=predict", f"ckpt_path={tmp_path / 'run'}", f"predict.input={images}", f"hydra.run.dir={tmp_path / 'p'}"]
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert_standalone_matches_predict(tmp_path / "run" / "model.keras", table, cwd=tmp_path)
