"""kfactory's own networks, built as the Keras applications are (their arguments, built-in layers only).

``SmallCNN`` is for small images trained from scratch: the applications were designed for 224 px
ImageNet photographs, and their smallest input is 32 px, so an 8x8 digit must be enlarged four times
before MobileNetV3Small can read it. Three stages of two 3x3 convolutions (32, 64, 128 filters), each
with batch normalization, max pooling between the stages: at 16 px about 10 M multiply-adds an image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

SMALL_CNN_FILTERS = (32, 64, 128)


def SmallCNN(  # noqa: N802 - named as the keras.applications builders are
    include_top: bool = False,
    weights: str | None = None,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    pooling: str | None = "avg",
    name: str = "small_cnn",
) -> keras.Model:
    """Pixels in [0, 255] to pooled features (``include_top`` is refused: there is no ImageNet top)."""
    import keras

    if include_top or weights is not None:
        raise ValueError("SmallCNN has no ImageNet weights or top: weights=None and include_top=False")
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    for stage, filters in enumerate(SMALL_CNN_FILTERS, start=1):
        if stage > 1:
            x = keras.layers.MaxPooling2D(2, padding="same", name=f"stage{stage}_pool")(x)
        for conv in (1, 2):
            prefix = f"stage{stage}_conv{conv}"
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=prefix)(x)
            x = keras.layers.BatchNormalization(name=f"{prefix}_bn")(x)
            x = keras.layers.ReLU(name=f"{prefix}_relu")(x)
    if pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(inputs, x, name=name)
