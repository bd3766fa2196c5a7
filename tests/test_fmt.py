"""Numbers as the leaderboard, the live view and the report write them."""

import math

import numpy as np

from hpo.fmt import column, duration, formatter, kind_of, metric, value


def test_one_precision_per_column():
    # not 0.3535 next to 0.03332: a metric to four decimals, every row alike
    assert column("val_acc", [0.3535, 0.03332, None, math.nan]) == ["0.3535", "0.0333", "", ""]
    assert column("val_loss", [2.302585, 0.5, math.inf]) == ["2.3026", "0.5000", "inf"]
    # a setting: three significant digits of the column's largest value
    assert column("momentum", [0.9, 0.85, 0.0]) == ["0.900", "0.850", "0.000"]
    # ... or scientific for all when a small one would lose its digits
    assert column("lr", [0.3, 0.0002, 0.01]) == ["3.00e-01", "2.00e-04", "1.00e-02"]
    assert column("weight_decay", [0.0, 5e-4]) == ["0", "5.00e-04"]
    # a measurement: no decimals beyond its size, never scientific
    assert column("wall_s", [1234.56, 3.2]) == ["1,235", "3"]
    assert column("img_per_s", [45.61, 3.2, 0.4]) == ["45.6", "3.2", "0.4"]


def test_kinds_come_from_the_schema():
    # a float setting searched over whole values reads as integers, one that is not at one
    # precision; a blank made pandas read convs_2 as float
    assert column("aug_rotate", [15.0, 0.0, 30.0]) == ["15", "0", "30"]
    assert column("warmup_epochs", [0.0, 1.0, 2.0]) == ["0", "1", "2"]
    assert column("aug_rotate", [15.0, 7.5]) == ["15.0", "7.5"]
    assert column("convs_2", [1.0, math.nan, 2.0]) == ["1", "", "2"]
    assert column("params", [1_234_567.0, 23_432]) == ["1,234,567", "23,432"]
    assert column("batch_size", [1024, 64]) == ["1,024", "64"]
    assert column("aug_flip", [True, np.False_]) == ["True", "False"]
    assert column("optimizer", ["sgd", None]) == ["sgd", ""]
    assert kind_of("trial_id", [3]) == "text" and column("trial_id", [12345]) == ["12345"]
    assert kind_of("kernel") == "int" and kind_of("width_2_1") == "int"
    # not a config key: from the values
    assert kind_of("pareto", [True, False]) == "bool" and kind_of("x", [1, 2]) == "int"
    assert kind_of("x", [1, 2.5]) == "float" and kind_of("x", ["a", 1]) == "text"


def test_single_values_and_durations():
    assert metric(0.81234) == "0.8123" and metric(None) == "—" and metric(1.0) == "1.0000"
    assert value(1234) == "1,234" and value(0.012345) == "0.0123"
    assert formatter([1.5, 2.25], decimals=2)(1.5) == "1.50"
    assert [duration(s) for s in (3, 65, 3725, None, math.inf)] == [
        "3s", "1m 05s", "1h 02m", "?", "?"]
