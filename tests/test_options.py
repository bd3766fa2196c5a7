"""Options declared once: the parser, the Python keywords, the one validator and the docs rows
all come from the same declarations."""

import argparse
import os

import pytest

from hpo.errors import ConfigError
from hpo.options import (
    IDENTITY,
    STICKY,
    SearchOptions,
    TrainOptions,
    add_arguments,
    check,
    declared,
    describe,
    from_arguments,
    from_keywords,
)


def parse(cls, *argv):
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser, cls)
    return from_arguments(cls, parser.parse_args(argv))


def test_every_field_is_an_option_with_help():
    for cls in (SearchOptions, TrainOptions):
        fields = [f for f in cls.__dataclass_fields__]
        assert set(declared(cls)) == set(fields)
        assert all(o.help for _, o in declared(cls).values())


def test_the_command_line_and_python_give_the_same_options():
    given = parse(SearchOptions, "--trials", "5", "--fraction", "0.5", "--time-budget", "2",
                  "--log", "mlflow", "--log", "mlflow", "--verbose")
    keywords = from_keywords(SearchOptions, dict(trials=5, fraction=0.5, time_budget=120,
                                                 log=("mlflow",), verbose=True), "test")
    assert given == keywords
    # minutes on the command line, seconds in the field
    assert given.time_budget == 120 and given.node_wait == 600


def test_the_command_line_refuses_a_bad_value_naming_what_it_allows():
    with pytest.raises(argparse.ArgumentError, match="must be 1 or more, got 0"):
        parse(SearchOptions, "--trials", "0")
    with pytest.raises(argparse.ArgumentError, match=r"must be in \(0, 1\], got 1.5"):
        parse(SearchOptions, "--fraction", "1.5")
    with pytest.raises(argparse.ArgumentError, match="a folder's name"):
        parse(SearchOptions, "--name", "a/b")


@pytest.mark.parametrize("keywords, message", [
    (dict(trials=0), "trials must be 1 or more, got 0"),
    (dict(fraction=2), r"fraction must be in \(0, 1\], got 2"),
    (dict(gpus_per_trial=0), r"gpus_per_trial must be in \(0, 64\], got 0"),
    (dict(name=""), "name must be a folder's name"),
    (dict(fresh="yes"), "fresh must be True or False"),
    (dict(log=("tensorboard",)), "log must be one of mlflow, wandb"),
])
def test_python_keywords_are_checked_by_the_same_rules(keywords, message):
    with pytest.raises(ConfigError, match=message):
        from_keywords(SearchOptions, keywords, "hpo.search")


def test_an_unknown_keyword_is_a_type_error_listing_the_options():
    with pytest.raises(TypeError, match="hpo.search: no option 'trails'.*trials"):
        from_keywords(SearchOptions, dict(trails=3), "hpo.search")


def test_paths_are_made_absolute_so_a_study_works_from_any_folder(tmp_path):
    options = check(SearchOptions(data="data/x", weights_dir="~/w", results="results"))
    assert options.data == os.path.abspath("data/x")
    assert options.weights_dir == os.path.expanduser("~/w")
    assert os.path.isabs(options.results)
    downloaded = check(SearchOptions(data="torchvision:dl")).data
    assert downloaded == f"torchvision:{os.path.abspath('dl')}"


def test_what_a_resume_does_with_each_option_is_declared():
    resume = {n: o.resume for n, (_, o) in declared(SearchOptions).items()}
    assert {n for n, r in resume.items() if r == IDENTITY} == {
        "max_epochs", "grace_period", "fraction", "split_seed", "seed", "storage"}
    assert {n for n, r in resume.items() if r == STICKY} == {"data", "trials", "select",
                                                             "select_seeds"}


def test_the_docs_rows_say_default_values_and_resume_rules():
    rows = {r["option"]: r for r in describe(SearchOptions)}
    assert rows["--split-seed"]["default"] == "0" and rows["--fraction"]["default"] == "1"
    assert rows["--checkpoint-every"]["default"] == "120" and rows["--node-wait"]["default"] \
        == "10"
    assert rows["--time-budget"]["values"] == "above 0"
    assert rows["--seed"]["on a resume"] == "must match"
    assert rows["--trials"]["on a resume"] == "kept unless given"
    assert {r["option"] for r in describe(TrainOptions)} >= {"target", "--seeds", "--point"}
