"""A tiny space for the test suite: small nets, few epochs, ASHA with short rungs."""

from hpo.space import choice, intrange, loguniform, stage

metric, mode = "val_acc", "max"
trials = 6
max_epochs = 4
grace_period = 1
reduction_factor = 2

dimensions = {
    "stages": intrange(1, 2),
    **{f"convs_{s}": intrange(1, 2, when=stage(s)) for s in (1, 2)},
    "width": choice([8, 16]),
    "optimizer": choice(["sgd", "adam"]),
    "lr": loguniform(1e-3, 0.1),
    "momentum": choice([0.0, 0.9], when=lambda c: c["optimizer"] == "sgd"),
    "aug_flip": choice([True, False]),
    "batch_size": 64,
    "epochs": max_epochs,
}

starting_points = {
    # a learning rate too small to learn anything in 4 epochs: ASHA should stop it
    "too-slow": dict(stages=1, convs_1=1, width=8, optimizer="sgd", lr=1e-6, momentum=0.0),
}
