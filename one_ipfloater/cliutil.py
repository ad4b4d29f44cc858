"""Command-line conventions shared by every entry point of the project."""

from __future__ import annotations

import argparse
import os
import sys


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized to the terminal without `shutil`: argparse imports
    shutil (and with it bz2, lzma and zlib) whenever a parser is built, which
    would put it on the daemon's start before its rules are in place."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None):
        if width is None:  # what shutil.get_terminal_size() does
            try:
                columns = int(os.environ["COLUMNS"])
            except (KeyError, ValueError):
                try:
                    columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
                except (AttributeError, ValueError, OSError):
                    columns = 80
            width = columns - 2
        super().__init__(prog, indent_increment, max_help_position, width)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line on stderr (`prog: message (see --help)`)
    and exit 2, like every other error of our commands; `--help` is unchanged."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        root = self.prog.split()[0]
        sub = " ".join(self.prog.split()[1:])
        where = f" {sub}" if sub else ""
        sys.stderr.write(f"{root}: {message} (see {root}{where} --help)\n")
        sys.exit(2)


def fail(prog: str, message: object, code: int = 1) -> int:
    """Write `prog: message` as ONE line on stderr (whitespace runs, newlines included,
    become one space: `onehook show` and scripts read one line) and return `code`."""
    sys.stderr.write(f"{prog}: {' '.join(str(message).split())}\n")
    return code


class SummaryHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of the description and epilog: the epilog is the list of
    commands with their arguments (see `command_summary`)."""


def anywhere(*flags: tuple) -> argparse.ArgumentParser:
    """A parent parser for flags that a command line may carry before or after the
    command (`prog --json status` and `prog status --json`): give it to the main parser
    and to every subparser. Each flag is `(names, help)`, a store_true whose default is
    SUPPRESS, so a subparser that did not see it does not reset what the main parser
    saw; read it with `getattr(args, dest, False)`."""
    parent = argparse.ArgumentParser(add_help=False)
    for names, help_text in flags:
        parent.add_argument(*names, action="store_true", default=argparse.SUPPRESS, help=help_text)
    return parent


def command_summary(prog: str, sub) -> str:
    """One line per command with its arguments, as the original ipfloater's help listed
    them, so that `prog --help` alone says how to call each command."""
    lines = [f"commands and their arguments (`{prog} COMMAND --help` explains each):"]
    for name, parser in sub.choices.items():
        words = [name]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.default is argparse.SUPPRESS:
                continue  # -h and the flags accepted anywhere
            if not action.option_strings:
                word = action.metavar or action.dest
                words.append(f"[{word}]" if action.nargs == "?" else word)
                continue
            metavar = action.metavar or action.dest.upper()
            if action.nargs == 0:
                words.append(f"[{action.option_strings[-1]}]")
            else:
                words.append(f"[{action.option_strings[-1]} {metavar}]")
        lines.append(f"  {prog} {' '.join(words)}")
    return "\n".join(lines)
