"""Command-line conventions shared by every entry point of the project."""

from __future__ import annotations

import argparse
import sys


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line on stderr (`prog: message (see --help)`)
    and exit 2, like every other error of our commands; `--help` is unchanged."""

    def error(self, message: str):
        root = self.prog.split()[0]
        sub = " ".join(self.prog.split()[1:])
        where = f" {sub}" if sub else ""
        sys.stderr.write(f"{root}: {message} (see {root}{where} --help)\n")
        sys.exit(2)
