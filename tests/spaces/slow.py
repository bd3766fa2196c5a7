"""The tiny space with longer trials, for a search that is still running when a node is lost
(tests/test_multinode.py): 9 epochs, ASHA rungs at 3 and 9, so a trial that has reported
one or two epochs is sure to train on for a while."""

from pathlib import Path

from hpo.space import load_space

tiny = load_space(Path(__file__).with_name("tiny.py"))  # a space file may build on another

metric, mode = tiny.metric, tiny.mode
trials = 10
max_epochs = 9
grace_period = 3
reduction_factor = 3
dimensions = {**tiny.dimensions, "epochs": max_epochs}
