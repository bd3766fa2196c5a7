"""The tiny space searched for two objectives: accuracy up, trainable parameters down."""

from pathlib import Path

from hpo.space import load_space

tiny = load_space(Path(__file__).with_name("tiny.py"))

metric = ["val_acc", "params"]  # the first ranks the leaderboard and drives ASHA
mode = ["max", "min"]
trials = 8
max_epochs = tiny.max_epochs
grace_period = tiny.grace_period
reduction_factor = tiny.reduction_factor
dimensions = tiny.dimensions
