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
