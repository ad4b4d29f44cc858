"""Command-line conventions shared by every entry point of the project."""

from __future__ import annotations

import argparse
import os
import sys


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized to the terminal without `shutil`: argparse imports
    shutil (and with it bz2, lzma and zlib, ~2 ms) whenever a parser is built, which
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
