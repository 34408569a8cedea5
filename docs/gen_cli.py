"""The CLI reference page, generated from the parsers `fsdx` itself builds.

Each section is what `fsdx COMMAND --help` prints: `fashionsd_x.cli.build_parser` makes the options from the
stage function's signature and docstring (and a training config's field comments), so the page cannot drift from
the CLI. mkdocs adds the page at every build (docs/hooks.py); `python docs/gen_cli.py` prints it, and
`python docs/gen_cli.py FILE` writes it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

WIDTH = 100  # columns argparse wraps the help at: the page is the same whatever terminal builds it
# The first word of a command -> the pipeline stage it belongs to, in the order the page lists them.
STAGES = {
    "sketch": "Data", "data": "Data",
    "train": "Training",
    "generate": "Generation", "demo": "Generation",
    "evaluate": "Evaluation", "ablate": "Evaluation",
    "studio": "Apps", "study": "Apps",
    "export": "Base models and exports",
}
OTHER = "Other commands"  # a command added to the CLI but not to STAGES still gets its section


@contextlib.contextmanager
def _columns(width: int) -> Iterator[None]:
    """argparse reads the terminal's width from $COLUMNS (shutil.get_terminal_size); pin it while formatting."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width + 2)  # argparse wraps at COLUMNS - 2
    try:
        yield
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def _subparser(parser: argparse.ArgumentParser, words: Iterable[str]) -> argparse.ArgumentParser:
    """The parser of `fsdx WORDS`, found by walking the subcommand groups build_parser made."""
    for word in words:
        group = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
        parser = group.choices[word]
    return parser


def command_help(name: str | None = None) -> str:
    """What `fsdx NAME --help` prints (`fsdx --help` for None), at WIDTH columns."""
    from fashionsd_x.cli import COMMANDS, build_parser

    command = next((c for c in COMMANDS if c.name == name), None)
    if name is not None and command is None:
        raise KeyError(f"no fsdx command {name!r}")
    parser = build_parser(command)  # builds the full options of this command only (imports its stage module)
    with _columns(WIDTH):
        return _subparser(parser, name.split() if name else ()).format_help().rstrip() + "\n"


def _anchor(title: str) -> str:
    return title.lower().replace(" ", "-")


def render(names: Iterable[str] | None = None) -> str:
    """The Markdown page: an index of the commands by stage, then each command's --help (all of them by default)."""
    from fashionsd_x.cli import COMMANDS

    chosen = [c for c in COMMANDS if names is None or c.name in set(names)]
    stages: dict[str, list] = {stage: [] for stage in dict.fromkeys(STAGES.values())}
    for command in chosen:
        stages.setdefault(STAGES.get(command.name.split()[0], OTHER), []).append(command)
    lines = ["# CLI reference", "",
             "Every section is what `fsdx COMMAND --help` prints. The page is generated at each build of these docs",
             "from `fashionsd_x/cli.py`, which makes each command's options from its stage function's signature",
             "and docstring, so it always matches the installed `fsdx`.", "",
             "| command | what it does |", "| --- | --- |"]
    lines += [f"| [`fsdx {c.name}`](#{_anchor('fsdx ' + c.name)}) | {c.summary} |" for c in chosen]
    lines += ["", "## fsdx", "", "```text", command_help().rstrip(), "```", ""]
    for stage, commands in stages.items():
        if not commands:
            continue
        lines += [f"## {stage}", ""]
        for command in commands:
            lines += [f"### fsdx {command.name}", "", command.summary[:1].upper() + command.summary[1:] + ".", "",
                      "```text", command_help(command.name).rstrip(), "```", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    page = render()
    if argv:
        Path(argv[0]).write_text(page, encoding="utf-8")
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
