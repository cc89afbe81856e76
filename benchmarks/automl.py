"""A time budget, four ways: kfactory's experiment=auto against a hand recipe, KerasTuner and AutoKeras.

Each way gets the same wall-clock budget, the same images and the same held-out test split, in a
process of its own (its whole wall time counted, imports included), one after another:
  kfactory     python run.py experiment=auto auto.budget=<budget>
  recipe       the best hand recipe (experiment=from_scratch_small model=small_cnn: kfactory's small CNN at
               32 px, 30 epochs) as one run, stopped by the same deadline if it would run longer, with
               trainer.deterministic=auto as experiment=auto's trials have it: kfactory's first trial is this
               recipe, and the same settings then train the same model both ways
  keras_tuner  KerasTuner Hyperband (max_epochs 30, factor 3) over the same space as experiment=auto:
               kfactory's small CNN and six keras.applications families from scratch, input size 32-128 px,
               learning rate 3e-4 to 1e-2 (log), dropout 0 or 0.2, augmentation none / light / strong; no trial
               starts after the deadline and a running one stops at it (KerasTuner has no time limit of its own)
  autokeras    AutoKeras 3 ImageClassifier (its own space and greedy tuner), up to 30 epochs a trial
               with early stopping, the deadline enforced the same way
The images: scikit-learn's 8x8 digits (1,797, 10 classes) and 1,200 photo crops (128x128 JPEGs of
scikit-learn's two sample photographs, 4 classes: each photograph's left and right half). Every way
trains on kfactory's train split, validates on its validation split and is scored on its test split
(read from the splits.csv of kfactory's best run, so all four see the same images). Reports each
way's test accuracy of the model it saved (loaded back from its file), its wall time and overrun,
and its trials. Targets: kfactory's test accuracy at or above each other way's; overrun within
max(2 % of the budget, 30 s); a model file that loads, every time.

    python benchmarks/automl.py --budget 5m                   # both image sets
    python benchmarks/automl.py --budget 15m --sets photos
    python benchmarks/automl.py --budget 5m --sets digits --seed 1   # another split, search and tuner seed
KerasTuner and AutoKeras are not kfactory's dependencies: pip install keras-tuner==1.4.8 autokeras==3.0.0
(a virtual environment with --system-site-packages keeps them apart; pass its python as --python).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
WAYS = ("kfactory", "recipe", "keras_tuner", "autokeras")
SETS = ("digits", "photos")
MAX_EPOCHS = 30
FAMILIES = (
    "SmallCNN",
    "MobileNetV3Small",
    "MobileNetV3Large",
    "MobileNetV2",
    "EfficientNetB0",
    "EfficientNetV2B0",
    "ResNet50V2",
)
SIZES = (32, 64, 96, 128)


def parse_seconds(text: str) -> float:
    sys.path.insert(0, str(ROOT))
    from kfactory.run.budget import parse_budget

    return parse_budget(text, "--budget")


def write_photos(root: Path, count: int = 1200, size: int = 128, seed: int = 0) -> None:
    """``count`` crops of the two sample photographs, 4 classes: each photograph's left and right half."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    for index, photo in enumerate(load_sample_images().images):
        image = Image.fromarray(photo)
        half = image.width // 2
        for side, left_edge in (("left", 0), ("right", half)):
            folder = root / f"photo{index}_{side}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count // 4):
                width = int(rng.integers(64, 200))
                left = left_edge + int(rng.integers(0, half - width))
                top = int(rng.integers(0, image.height - width))
                crop = image.crop((left, top, left + width, top + width)).resize((size, size))
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                crop.save(folder / f"{i:05d}.jpg", quality=90)


def data_args(name: str, work: Path) -> list[str]:
    return [] if name == "digits" else ["data=folder", f"data.path={work / 'photos'}"]


# --- the ways, each in its own process ------------------------------------------------------------------------


def run_kfactory(name: str, work: Path, budget_s: float, seed: int) -> dict:
    sweep = work / "kfactory"
    argv = [sys.executable, str(ROOT / "run.py"), "experiment=auto", f"auto.budget={budget_s:.0f}s", f"seed={seed}"]
    argv += [*data_args(name, work), "trainer.verbose=0", f"hydra.sweep.dir={sweep}"]
    wall = run_timed(argv, work / "kfactory.log", budget_s)
    best = Path(str(OmegaConf.load(sweep / "optimization_results.yaml").best_dir))
    metrics = json.loads((best / "metrics.json").read_text())
    trials = sum(1 for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    return {"wall_s": wall, "test_accuracy": metrics["test_accuracy"], "model": str(best / "model.keras"),
            "trials": trials}  # fmt: skip


def run_recipe(name: str, work: Path, budget_s: float, seed: int) -> dict:
    run_dir = work / "recipe"
    argv = [sys.executable, str(ROOT / "run.py"), "experiment=from_scratch_small", "model=small_cnn", f"seed={seed}"]
    argv += [*data_args(name, work), "trainer.deterministic=auto"]
    argv += ["trainer.verbose=0", f"hydra.run.dir={run_dir}"]
    started = time.time()
    env = {"KFACTORY_DEADLINE": f"{started + budget_s - 5:.1f}"}  # the deadline a search's job gets
    wall = run_timed(argv, work / "recipe.log", budget_s, env)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"wall_s": wall, "test_accuracy": metrics["test_accuracy"], "model": str(run_dir / "model.keras"),
            "trials": 1}  # fmt: skip


def run_child(way: str, name: str, work: Path, budget_s: float, python: str, seed: int) -> dict:
    argv = [python, __file__, "--child", way, "--sets", name, "--work", str(work), "--budget", f"{budget_s:.0f}s"]
    argv += ["--seed", str(seed)]
    wall = run_timed(argv, work / f"{way}.log", budget_s)
    result = json.loads((work / f"{way}.json").read_text())
    result["wall_s"] = wall
    return result


def run_timed(argv: list[str], log: Path, budget_s: float, env: dict | None = None) -> float:
    """Seconds the process took; it may run past the budget by 10 minutes before it is killed."""
    started = time.time()
    with log.open("w") as out:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KFACTORY_OFFLINE": "1", **(env or {})}
        subprocess.run(
            argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=budget_s + 600, check=True, env=env
        )
    return time.time() - started


# --- in the child process: KerasTuner and AutoKeras --------------------------------------------------------------


def load_split(name: str, work: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """kfactory's train, val and test images (uint8 RGB) and labels, from its best run's splits.csv."""
    import pandas as pd
    from PIL import Image

    best = Path(str(OmegaConf.load(work / "kfactory" / "optimization_results.yaml").best_dir))
    table = pd.read_csv(best / "splits.csv", dtype={"file": str})
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        images = np.repeat(pixels[..., None], 3, -1)[table["file"].astype(int).to_numpy()]
    else:
        root = work / "photos"
        images = np.stack([np.asarray(Image.open(p if Path(p).is_absolute() else root / p).convert("RGB"))
                           for p in table["file"]])  # fmt: skip
    classes = sorted(table["label"].astype(str).unique(), key=lambda c: (len(c), c))
    labels = table["label"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
    return {s: (images[(table["split"] == s).to_numpy()], labels[(table["split"] == s).to_numpy()])
            for s in ("train", "val", "test")}  # fmt: skip


def deadline_callback(deadline: float, oracle_of):
    """Stops a fit at the deadline and lets no new trial start: the tuner's max_trials becomes its count."""
    import keras

    class Deadline(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if time.time() >= deadline:
                self.model.stop_training = True
                oracle = oracle_of()
                oracle.max_trials = len(oracle.trials)

    return Deadline()


def augmentation(strength: str):
    import keras

    if strength == "none":
        return []
    layers = [keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.05 if strength == "light" else 0.1)]
    if strength == "strong":
        layers += [keras.layers.RandomTranslation(0.1, 0.1), keras.layers.RandomZoom(0.2)]
    else:
        layers += [keras.layers.RandomZoom(0.1)]
    return layers


def build_hypermodel(classes: int):
    """The space of experiment=auto, as a KerasTuner hypermodel."""
    import keras

    from kfactory.model import nets

    def build(hp):
        family = hp.Choice("family", list(FAMILIES))
        size = hp.Choice("input_size", list(SIZES))
        inputs = keras.Input((None, None, 3))
        x = keras.layers.Resizing(size, size)(inputs)
        for layer in augmentation(hp.Choice("augment", ["none", "light", "strong"])):
            x = layer(x)
        if family in ("MobileNetV2", "ResNet50V2"):  # these expect [-1, 1]; the others rescale themselves
            x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
        builder = nets.SmallCNN if family == "SmallCNN" else getattr(keras.applications, family)
        base = builder(weights=None, include_top=False, input_shape=(size, size, 3), pooling="avg")
        x = keras.layers.Dropout(hp.Choice("dropout", [0.0, 0.2]))(base(x))
        model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))
        rate = hp.Float("learning_rate", 3e-4, 1e-2, sampling="log")
        model.compile(keras.optimizers.Adam(rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    return build


def plain_int_shapes(autokeras) -> None:
    """AutoKeras 3.0 sizes its blocks with the data's shapes as NumPy integers, which Keras 3.15 refuses as
    Dense units: make them Python ints (the one change to AutoKeras here)."""
    original = autokeras.graph.Graph.set_io_shapes

    def set_io_shapes(self, shapes):
        original(self, shapes)
        for node in self.inputs:
            node.shape = tuple(None if d is None else int(d) for d in node.shape)
        for node in self.outputs:
            block = node.in_blocks[0]
            block.shape = tuple(None if d is None else int(d) for d in block.shape)

    autokeras.graph.Graph.set_io_shapes = set_io_shapes


def child(way: str, name: str, work: Path, budget_s: float, seed: int) -> None:
    started = time.time()
    deadline = started + budget_s - 10  # the best model's save and test evaluation come after
    import keras

    data = load_split(name, work)
    (x, y), (x_val, y_val), (x_test, y_test) = data["train"], data["val"], data["test"]
    classes = int(max(y.max(), y_val.max(), y_test.max())) + 1
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=5)
    path = work / f"{way}.keras"
    if way == "keras_tuner":
        import keras_tuner

        tuner = keras_tuner.Hyperband(build_hypermodel(classes), objective="val_accuracy", max_epochs=MAX_EPOCHS,
                                      factor=3, seed=seed, directory=str(work / "kt"), project_name=name,
                                      overwrite=True, max_consecutive_failed_trials=10)  # fmt: skip
        limit = deadline_callback(deadline, lambda: tuner.oracle)
        tuner.search(x, y, validation_data=(x_val, y_val), batch_size=64, callbacks=[stop, limit], verbose=2)
        model = tuner.get_best_models(1)[0]
        trials = len(tuner.oracle.trials)
    else:
        import autokeras

        classifier = autokeras.ImageClassifier(max_trials=100, directory=str(work / "ak"), project_name=name,
                                               overwrite=True, seed=seed)  # fmt: skip
        limit = deadline_callback(deadline, lambda: classifier.tuner.oracle)
        plain_int_shapes(autokeras)
        classifier.fit(x, y, validation_data=(x_val, y_val), epochs=MAX_EPOCHS, batch_size=64,
                       callbacks=[stop, limit], verbose=2)  # fmt: skip
        model = classifier.export_model()
        trials = len(classifier.tuner.oracle.trials)
    model.save(path)
    loaded = keras.saving.load_model(path)  # the file is the result: it must load and predict
    accuracy = float((loaded.predict(x_test, verbose=0).argmax(-1) == y_test).mean())
    result = {
        "test_accuracy": accuracy,
        "model": str(path),
        "trials": trials,
        "usable": True,
    }  # it loaded and predicted
    (work / f"{way}.json").write_text(json.dumps(result))


# --- the comparison -----------------------------------------------------------------------------------------------


def model_loads(path: str) -> bool:
    import keras

    try:
        keras.saving.load_model(path)
    except Exception:  # noqa: BLE001 - any failure to load is "not usable"
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="5m")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS)
    parser.add_argument("--python", default=sys.executable, help="the python that has keras-tuner and autokeras")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kfactory-automl"))
    parser.add_argument("--child", choices=("keras_tuner", "autokeras"))
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="kfactory's seed (the split, the search) and the tuners'; another than 42 works under <work>/seed-<seed>",
    )
    args = parser.parse_args()
    budget_s = parse_seconds(args.budget)
    if args.child:
        child(args.child, args.sets[0], args.work, budget_s, args.seed)
        return
    margin = max(0.02 * budget_s, 30.0)
    rows = []
    root = args.work if args.seed == 42 else args.work / f"seed-{args.seed}"  # another seed: another search
    for name in args.sets:
        work = root / name
        work.mkdir(parents=True, exist_ok=True)
        if name == "photos" and not (work / "photos").is_dir():
            write_photos(work / "photos")
        for way in args.ways:
            if way == "kfactory":
                result = run_kfactory(name, work, budget_s, args.seed)
            elif way == "recipe":
                result = run_recipe(name, work, budget_s, args.seed)
            else:
                result = run_child(way, name, work, budget_s, args.python, args.seed)
            # KerasTuner's and AutoKeras's files load where their package is: the child loaded its own back
            result.update(set=name, way=way, usable=result.get("usable") or model_loads(result["model"]))
            result["overrun_s"] = result["wall_s"] - budget_s
            rows.append(result)
            print(json.dumps(result), flush=True)
    print(f"\nBudget {args.budget} ({budget_s:.0f} s); overrun allowed {margin:.0f} s\n")
    print("| set | way | test accuracy | wall s | overrun s | trials | model loads |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['set']} | {r['way']} | {r['test_accuracy']:.4f} | {r['wall_s']:.0f} | {r['overrun_s']:+.0f} | "
              f"{r['trials']} | {'yes' if r['usable'] else 'no'} |")  # fmt: skip
    for name in args.sets:
        mine = next((r for r in rows if r["set"] == name and r["way"] == "kfactory"), None)
        if mine is None:
            continue
        others = [r for r in rows if r["set"] == name and r["way"] != "kfactory"]
        beaten = all(mine["test_accuracy"] >= r["test_accuracy"] for r in others)
        print(
            f"{name}: kfactory at or above every other way: {'met' if beaten else 'missed'}; "
            f"overrun within {margin:.0f} s: {'met' if mine['overrun_s'] <= margin else 'missed'}"
        )


if __name__ == "__main__":
    main()
