"""A tiny trained model in a run-like directory, for predict/export tests.

MobileNet at 32 px, fitted for one short epoch on a written image folder and
saved the way training saves it (class names inside the .keras file), with the
metrics.json and .hydra/config.yaml a real run leaves next to it. Built in the
test process: a CLI training run costs a minute on a shared CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from tests.conftest import compose_config, write_image_folder

SIZE = 32  # the images are written at the model's input size: no resizing anywhere
CLASSES = {"cats": 12, "dogs": 12}


def write_images(root: Path) -> Path:
    """Two classes of 12 PNG images each, at the model's input size."""
    return write_image_folder(root, CLASSES, size=SIZE)


def train_tiny_model(run_dir: Path, images: Path) -> Path:
    """Fit the head of MobileNet (32 px, random base) on ``images``; return its model.keras."""
    import keras
    from PIL import Image

    from kfactory.data.sources import list_folder
    from kfactory.model.build import build_model
    from kfactory.model.checkpoint import MODEL_FILE, save_model

    model_keys = ["model=mobilenet", "model.weights=null", f"model.input_size={SIZE}", "model.bn_momentum=0.0"]
    cfg = compose_config(["data=folder", f"data.path={images}", *model_keys])
    source = list_folder(str(images))
    x = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in source.paths])
    keras.utils.set_random_seed(0)
    model = build_model(cfg, len(source.class_names))
    # A random base with fresh BatchNormalization statistics (mean 0, variance 1) shrinks
    # its features to ~1e-20 and every prediction to 0.5. One forward pass in training mode
    # with momentum 0 sets the statistics from the data: features, and outputs, that vary.
    model(x, training=True)
    for layer in model.layers[:-1]:  # then fit the head only: a full backward pass costs ten times the time
        layer.trainable = False
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, source.labels, batch_size=8, epochs=2, verbose=0)
    run_dir.mkdir(parents=True, exist_ok=True)
    metadata = {"class_names": source.class_names, "model": "mobilenet", "input_size": [SIZE, SIZE]}
    metadata.update(loss="sparse_categorical_crossentropy", activation="softmax")
    save_model(model, run_dir / MODEL_FILE, metadata)
    (run_dir / "metrics.json").write_text(json.dumps({"accuracy": history.history["accuracy"][-1]}))
    (run_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return run_dir / MODEL_FILE
