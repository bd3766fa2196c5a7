"""The tiny space with longer trials, for a search that is still running when a node is lost
(tests/test_multinode.py): 9 epochs, ASHA rungs at 3 and 9, so a trial that has reported
one or two epochs is sure to train on for a while."""

from hpo.space import choice, intrange, loguniform, stage

metric, mode = "val_acc", "max"
trials = 10
max_epochs = 9
grace_period = 3
reduction_factor = 3

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
