"""MkDocs hook: the reference tables the code knows, built from the code at every build.

A page asks for a table with a placeholder comment on a line of its own, e.g.

    <!-- hpo:options search -->

and the build replaces the line with a Markdown table made from hpo's own declarations (the
options, the config schema, a space file's settings, the registry's names, the statuses, the
study folder's files, tests/mistakes.py's bad-input table). An unknown placeholder fails the
build, as a broken link does under `mkdocs build --strict`, so a page never shows a stale or a
silently missing table. Registered under `hooks:` in mkdocs.yml; imports neither torch nor Ray.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Callable

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[1]
# a placeholder: the whole line, `<!-- hpo:NAME [ARGUMENT] -->`
PLACEHOLDER = re.compile(r"^[ \t]*<!--\s*hpo:(?P<name>[\w-]+)(?:[ \t]+(?P<arg>[^\s>]+))?"
                         r"\s*-->[ \t]*$", re.MULTILINE)
# any line that starts like one, so that a misspelt placeholder fails too
STARTS = re.compile(r"^[ \t]*<!--\s*hpo:", re.MULTILINE)


class Unknown(Exception):
    """A placeholder's argument names no table."""


# -- Markdown ----------------------------------------------------------------------------------
CODE_SPAN = re.compile(r"(`+).+?\1")


def cell(value: Any) -> str:
    """One table cell: on one line, its pipes escaped. A pipe inside inline code stays as it
    is: Python-Markdown's tables do not split a cell there, and would show a backslash."""
    text = " ".join(("" if value is None else str(value)).split())
    out, at = [], 0
    for span in CODE_SPAN.finditer(text):
        out += [plain(text[at:span.start()]), span.group()]
        at = span.end()
    return "".join(out) + plain(text[at:])


def plain(text: str) -> str:
    """Text shown as it is written: `results/<study>` is no HTML tag, `width * growth**(s-1)`
    no emphasis, and a pipe does not end the cell."""
    text = re.sub(r"([\\*_\[\]|])", r"\\\1", text)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def code(value: Any) -> str:
    """A cell's value as inline code (empty stays empty)."""
    text = "" if value is None else str(value)
    if not text:
        return ""
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def shown(value: Any) -> str:
    """A Python default as the docs show it: inline code, strings without quotes."""
    return "" if value is None else code(value)


# -- the tables -------------------------------------------------------------------------------
def options(command: str | None) -> str:
    """`hpo search` and `hpo train`: hpo.options.describe of their declarations; the other
    commands: their argparse parser (hpo.cli.build_parser)."""
    from hpo.options import RUN, SearchOptions, TrainOptions, declared, describe

    classes = {"search": SearchOptions, "train": TrainOptions}
    if command in classes:
        rows = describe(classes[command])
        # the column only where some option is more than this run's (hpo train's are not)
        resume = any(o.resume != RUN for _, o in declared(classes[command]).values())
        header = ["option", "values", "default", *(["on a resume"] if resume else []), "help"]
        return table(header, [[code(r["option"]), r["values"], code(r["default"]),
                               *([r["on a resume"]] if resume else []), r["help"]]
                              for r in rows])
    parser = subcommands().get(command or "")
    if parser is None:
        raise Unknown(f"no command {command!r} (hpo has: {', '.join(subcommands())})")
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = ", ".join(action.option_strings) or action.dest
        default = "" if action.default in (None, False, argparse.SUPPRESS) else action.default
        rows.append([code(name), values_of(action), shown(default), action.help or ""])
    return table(["option", "values", "default", "help"], rows)


def values_of(action: argparse.Action) -> str:
    """What an argparse argument takes, in words: a flag, its choices, or what its checked
    type allows (hpo.values' Allowed.describe), else its metavar."""
    from hpo.values import Allowed

    if action.nargs == 0:
        return "flag"
    if action.choices:
        return "one of " + ", ".join(map(str, action.choices))
    for cell_ in getattr(action.type, "__closure__", None) or ():
        if isinstance(cell_.cell_contents, Allowed):
            return cell_.cell_contents.describe()
    if not action.option_strings:
        return "one or more, positional" if action.nargs in ("+", "*") else "positional"
    return action.metavar or "text"


def subcommands() -> dict[str, argparse.ArgumentParser]:
    from hpo.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands(_: None) -> str:
    """Every command of `hpo`, with its help (the first paragraph of its docstring)."""
    from hpo.cli import build_parser

    rows = []
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                rows.append([code(f"hpo {choice.dest}"), choice.help])
    return table(["command", "what it does"], rows)


def resume(_: None) -> str:
    """The options of `hpo search` a resume compares (identity) or keeps (sticky), from their
    declarations; every other option is this run's only."""
    from hpo.options import RUN, SearchOptions, declared, describe

    rows = zip(declared(SearchOptions).values(), describe(SearchOptions))
    return table(["option", "on a resume", "help"],
                 [[code(r["option"]), r["on a resume"], r["help"]]
                  for (_, o), r in rows if o.resume != RUN])


def schema(_: None) -> str:
    """hpo.config.SCHEMA: every config key, its default, what it allows and means."""
    from hpo.config import SCHEMA

    return table(["key", "default", "values", "meaning"],
                 [[code(name), shown(key.default), key.allowed.describe(), key.help]
                  for name, key in SCHEMA.items()])


def settings(_: None) -> str:
    """hpo.space.SETTINGS: the names a space file may set besides dimensions and starting
    points."""
    from hpo.space import SETTINGS

    rows = []
    for name, s in SETTINGS.items():
        default = ("required" if s.default is None and not s.optional else
                   "" if s.default is None else shown(s.default))
        rows.append([code(name), s.allowed.describe() if s.allowed else "", default, s.help])
    return table(["name", "values", "default", "meaning"], rows)


def primitives(_: None) -> str:
    """The functions a space file builds its dimensions with, and their docstrings."""
    from hpo import space

    rows = []
    for name in ("choice", "uniform", "loguniform", "intrange", "stage", "dense"):
        fn = getattr(space, name)
        params = []
        for p in inspect.signature(fn).parameters.values():
            if p.kind is p.KEYWORD_ONLY and "*" not in params:
                params.append("*")
            params.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
        rows.append([code(f"{name}({', '.join(params)})"), inspect.getdoc(fn) or ""])
    return table(["primitive", "what it gives"], rows)


def names(which: str | None) -> str:
    """One of hpo.registry's tables."""
    from hpo import registry as r

    tables: dict[str, Callable[[], str]] = {
        "optimizers": lambda: table(
            ["optimizer", "torch class", "takes momentum", "takes nesterov"],
            [[code(n), code(f"torch.optim.{o.torch_class}"), yes(o.momentum), yes(o.nesterov)]
             for n, o in r.OPTIMIZERS.items()]),
        "schedules": lambda: table(
            ["schedule", "applied"],
            [[code(n), "after each epoch, from the validation loss"
              if n in r.PER_EPOCH_SCHEDULES else "at every optimisation step"]
             for n in r.SCHEDULES]),
        "activations": lambda: table(
            ["activation", "torch class"],
            [[code(n), code(f"torch.nn.{c}")] for n, c in r.ACTIVATIONS.items()]),
        "backbones": lambda: table(
            ["backbone", "weights file", "fetched from"],
            [[code(n), code(b.url.rsplit("/", 1)[-1]), code(b.url)]
             for n, b in r.BACKBONES.items()]),
        "samplers": lambda: table(
            ["sampler", "what it does", "Optuna sampler"],
            [[code(n), s.description, code(f"optuna.samplers.{s.optuna_class}")]
             for n, s in r.SAMPLERS.items()]),
        "metrics": lambda: table(
            ["metric", "better", "may be"],
            [[code(n), "higher (max)" if m.mode == "max" else "lower (min)",
              "the metric, or the first of two objectives: it ranks the leaderboard and "
              "drives ASHA" if m.per_epoch else "the second of two objectives only"]
             for n, m in r.METRICS.items()]),
        "trackers": lambda: table(
            ["--log", "install", "where the runs go"],
            [[code(n), code(f"pip install -e '.[{t.extra}]'"), t.where]
             for n, t in r.TRACKERS.items()]),
    }
    if which not in tables:
        raise Unknown(f"no table {which!r} (hpo.registry's: {', '.join(tables)})")
    return tables[which]()


def yes(flag: bool) -> str:
    return "yes" if flag else ""


def statuses(_: None) -> str:
    """hpo.status.Status: each status a trial can have and what it means."""
    from hpo.status import Status

    return table(["status", "meaning"], [[code(s.value), s.meaning] for s in Status])


def folder_files(_: None) -> str:
    """hpo.folder.FILES: what each file of a study folder holds."""
    from hpo.folder import FILES

    return table(["file", "what it holds"], [[code(f.name), f.what] for f in FILES.values()])


def mistakes(_: None) -> str:
    """tests/mistakes.py's MISTAKES: what a user typed and what hpo's one line says."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from mistakes import MISTAKES

    return table(["you typed", "hpo's one line contains"],
                 [[typed(m.typed), code(m.says)] for m in MISTAKES])


def typed(text: str) -> str:
    """A command as tests/mistakes.py writes it, `hpo search s.py --data cut (a truncated
    Parquet file)` or `hpo search s.py with dimensions[...] = 1.5`: the command as code, the
    words around it as words."""
    note = re.fullmatch(r"(.*?) \((.*)\)", text)
    command, note = (note[1], f" ({note[2]})") if note else (text, "")
    command, _, changed = command.partition(" with ")
    return code(command) + (f" with {code(changed)}" if changed else "") + plain(note)


def benchmarks(_: None) -> str:
    """BENCHMARKS.md, from the repository's root, as it is."""
    return (ROOT / "BENCHMARKS.md").read_text()


TABLES: dict[str, Callable[[str | None], str]] = {
    "options": options, "commands": commands, "resume": resume, "config": schema,
    "settings": settings, "primitives": primitives, "names": names, "statuses": statuses,
    "files": folder_files, "mistakes": mistakes, "benchmarks": benchmarks,
}
WITH_ARGUMENT = {"options", "names"}


def render(name: str, arg: str | None, where: str) -> str:
    if name not in TABLES:
        raise PluginError(f"{where}: unknown placeholder hpo:{name} (known: "
                          f"{', '.join(TABLES)})")
    if (arg is None) == (name in WITH_ARGUMENT):
        raise PluginError(f"{where}: placeholder hpo:{name} " + (
            "needs an argument" if arg is None else f"takes no argument, got {arg!r}"))
    try:
        return TABLES[name](arg)
    except Unknown as exc:
        raise PluginError(f"{where}: placeholder hpo:{name} {arg}: {exc.args[0]}") from None


# -- MkDocs' hook -----------------------------------------------------------------------------
def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    where = page.file.src_uri
    found = PLACEHOLDER.findall(markdown)
    if len(found) != len(STARTS.findall(markdown)):
        bad = [line.strip() for line in markdown.splitlines()
               if STARTS.match(line) and not PLACEHOLDER.match(line)]
        raise PluginError(f"{where}: not a placeholder hpo knows how to read: {bad[0]}")
    return PLACEHOLDER.sub(lambda m: render(m["name"], m["arg"], where), markdown)
