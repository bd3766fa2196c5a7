"""Your own images: a folder of class folders (DIR/train/<class>/*.png, optionally DIR/test/...),
any size and channel count, resized on load to `image_size`.

This file is how hpo is adapted to a dataset: set the size and channels, then narrow the
ranges to what suits images of that size. Nothing in hpo/ needs to change.
    hpo search spaces/imagefolder.py --data path/to/folder
"""

import math

from hpo.space import choice, dense, intrange, loguniform, stage, uniform

image_size = 64  # every image is resized to 64x64 when decoded (once, then cached)
# every stage halves the image; the last must still have a pixel to pool: 28 px takes 4
# stages (28, 14, 7, 3, 1), 64 px and more up to 5
max_stages = min(5, int(math.log2(image_size)))
channels = None  # 1 = grayscale, 3 = RGB, None = grayscale if the images are
metric, mode = "val_acc", "max"
trials = 32
max_epochs = 20
grace_period = 2
reduction_factor = 3
val_fraction = 0.15  # small datasets want a larger validation split for a stable choice
# The sampler is hpo's default: univariate TPE, 10 random start-up draws after the starting
# points. On the digits the CIFAR-10 space's multivariate TPE with 3 did no better (BENCHMARKS.md,
# "the sampler alone on the digits"); set `sampler` and `startup_trials` here to change it.

dimensions = {
    "stages": intrange(min(3, max_stages), max_stages),
    **{f"convs_{s}": intrange(1, 2, when=stage(s)) for s in range(1, 6)},
    "width": choice([16, 32, 64]),
    "growth": choice([1.5, 2.0]),
    "kernel": choice([3, 5]),
    "padding": "same",
    "pool": choice(["max", "conv"]),
    "activation": choice(["relu", "gelu"]),
    "bn": choice(["before", "after"]),
    "residual": choice([False, True]),
    **{f"dropout_{s}": uniform(0.0, 0.3, when=stage(s)) for s in range(1, 6)},
    "head": "gap",
    "dense_layers": intrange(0, 1),
    "dense_1": choice([128, 256], when=dense(1)),
    "aug_flip": choice([True, False]),  # turn off for images whose left and right differ
    "aug_crop": choice([0, 4, 8]),
    "aug_rotate": choice([0.0, 15.0]),
    "aug_zoom": choice([0.0, 0.15]),
    "aug_brightness": choice([0.0, 0.2]),
    "aug_contrast": choice([0.0, 0.2]),
    "optimizer": choice(["sgd", "adamw"]),
    "lr": loguniform(1e-4, 0.3),
    "momentum": uniform(0.85, 0.95, when=lambda c: c["optimizer"] == "sgd"),
    "nesterov": True,
    "weight_decay": loguniform(1e-5, 5e-3),
    "label_smoothing": uniform(0.0, 0.15),
    "batch_size": choice([32, 64, 128]),
    "schedule": choice(["cosine", "onecycle"]),
    "warmup_epochs": choice([0, 1]),
    "epochs": max_epochs,
    "seed": 0,
}

# Three well-known small recipes, written in this space's own values and scaled to the image
# size (every stage it can take; random crops only from 32 px up, where 4 px is a small shift),
# evaluated first so that the search starts from what usually works and has to beat it. They
# are general practice, not tuned on any dataset hpo is benchmarked on: conv-BN-ReLU
# throughout (bn="before"), no flips (a user's images may not be mirror-symmetric: digits,
# text), no dropout in the first trials.
_crop = 4 if image_size >= 32 else 0


def _each_stage(values: dict) -> dict:
    """The same per-stage values for stages 1-5 (a stage the net lacks ignores its keys)."""
    return {f"{k}_{s}": v for k, v in values.items() for s in range(1, 6)}


starting_points = {
    # a ResNet-style net (two 3x3 convs per stage, a skip around them, widths doubling) with
    # the usual SGD recipe: Nesterov momentum 0.9, lr 0.1 per 256 images scaled linearly to
    # the batch, one-cycle, weight decay 5e-4, label smoothing 0.1
    "resnet-sgd": dict(
        stages=max_stages, **_each_stage(dict(convs=2, dropout=0.0)), width=32, growth=2.0,
        kernel=3, pool="max", activation="relu", bn="before", residual=True, dense_layers=0,
        optimizer="sgd", lr=0.025, momentum=0.9, weight_decay=5e-4, label_smoothing=0.1,
        batch_size=64, schedule="onecycle", warmup_epochs=0, aug_flip=False, aug_crop=_crop,
        aug_rotate=0.0, aug_zoom=0.0, aug_brightness=0.0, aug_contrast=0.0,
    ),
    # a plain VGG-style net (one conv per stage) with AdamW at lr 1e-3 and a cosine decay:
    # the recipe that trains almost anything without tuning the learning rate
    "plain-adamw": dict(
        stages=max_stages, **_each_stage(dict(convs=1, dropout=0.0)), width=32, growth=2.0,
        kernel=3, pool="max", activation="relu", bn="before", residual=False, dense_layers=0,
        optimizer="adamw", lr=1e-3, weight_decay=5e-4, label_smoothing=0.0, batch_size=64,
        schedule="cosine", warmup_epochs=0, aug_flip=False, aug_crop=_crop, aug_rotate=0.0,
        aug_zoom=0.0, aug_brightness=0.0, aug_contrast=0.0,
    ),
    # the same small and shallow with more, smaller steps: what a small dataset or a short
    # budget wants
    "small-adamw": dict(
        stages=min(3, max_stages), **_each_stage(dict(convs=1, dropout=0.0)), width=16,
        growth=2.0, kernel=3, pool="max", activation="relu", bn="before", residual=False,
        dense_layers=0, optimizer="adamw", lr=3e-3, weight_decay=5e-4, label_smoothing=0.0,
        batch_size=32, schedule="onecycle", warmup_epochs=0, aug_flip=False, aug_crop=0,
        aug_rotate=0.0, aug_zoom=0.0, aug_brightness=0.0, aug_contrast=0.0,
    ),
}
