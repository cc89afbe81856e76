"""Read a finished fit's history for a run that learned nothing it can use, and name the likely cause.

The case seen most: a model with batch normalization, trained from scratch for
few steps, reaches a high training accuracy while its validation accuracy stays
at chance. Training batches are normalised with their own statistics; validation
uses the moving averages, which have not caught up with the weights yet
(MobileNetV3Small on the digits, one epoch: 0.92 validation accuracy with batch
statistics, 0.09 with the moving averages; a second epoch brings it to 0.95).
"""

from __future__ import annotations

import keras

AT_CHANCE = 0.15  # validation below chance plus this share of the way from chance to 1 counts as chance
LEARNED = 0.5  # training above chance plus this share of the way to 1 counts as learning


def stuck_at_chance(train_accuracy: float, best_val_accuracy: float, classes: int, learned: float = LEARNED) -> bool:
    """Whether training learned (got above chance plus ``learned`` of the way to 1) while the best validation
    accuracy of the run stayed at chance."""
    chance = 1 / classes
    return best_val_accuracy < chance + AT_CHANCE * (1 - chance) and train_accuracy > chance + learned * (1 - chance)


def has_batch_norm(model: keras.Model) -> bool:
    """Whether ``model`` or a model inside it has a BatchNormalization layer."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            return True
        if isinstance(layer, keras.Model) and has_batch_norm(layer):
            return True
    return False


def chance_diagnosis(
    history: dict[str, list[float]],
    classes: int,
    model: keras.Model,
    steps: int,
    from_scratch: bool,
    learned: float = LEARNED,
) -> str | None:
    """One line on a run whose validation accuracy stayed at chance while training accuracy climbed; else None.

    ``history``: the fit's logs by key (``accuracy``, ``val_accuracy``); ``steps``: training steps run;
    ``learned``: how far above chance training must be (``AT_CHANCE`` for a trial pruned for it).
    """
    train, val = history.get("accuracy"), history.get("val_accuracy")
    if not train or not val or classes < 2 or not stuck_at_chance(train[-1], max(val), classes, learned):
        return None
    seen = (
        f"Validation accuracy stayed near chance (best {max(val):.2f}; chance is {1 / classes:.2f} with {classes} "
        f"classes) while training accuracy reached {train[-1]:.2f}"
    )
    if has_batch_norm(model):
        start = " or start from pretrained weights (model.weights=imagenet)" if from_scratch else ""
        return (
            f"{seen}: after {steps} training steps the batch-normalization statistics that validation uses "
            "(moving averages) do not yet match the weights, which still change faster than the averages follow. "
            f"Train more steps (trainer.epochs){start}."
        )
    return (
        f"{seen}: the validation images likely differ from the training images (other classes or another "
        "preprocessing), or the training set is small enough to memorise. Check the data's splits and classes, "
        "or add data.augment."
    )
