"""What the demo prints: chapters, the commands it runs with their output, each check with what
it saw, and the closing summary table.

A check that does not hold raises StoryFailed; the demo stops there and exits 1, so CI fails.
"""

from __future__ import annotations

import shlex
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

WIDTH = 100
INDENT = "     "


class StoryFailed(Exception):
    """A step of the story did not hold; the message says what was expected and what was seen."""


@dataclass
class Row:
    """One line of the summary table."""

    chapter: str
    happened: str
    did: str
    took: str


@dataclass
class Narrator:
    out: TextIO = sys.stdout
    rows: list[Row] = field(default_factory=list)
    checks: int = 0
    started: float = field(default_factory=time.monotonic)

    def _print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def title(self, text: str) -> None:
        self._print(f"\n{'=' * WIDTH}\n{text}\n{'=' * WIDTH}")

    def chapter(self, heading: str, intro: str = "") -> None:
        self._print(f"\n{heading}\n{'-' * len(heading)}")
        if intro:
            self.say(intro)

    def say(self, text: str) -> None:
        """Narration, wrapped and indented."""
        self._print(textwrap.fill(text, WIDTH, initial_indent=INDENT, subsequent_indent=INDENT))

    def command(self, argv: Sequence[str], output: str = "", max_lines: int = 30) -> None:
        """A command as the reader would type it, then its output (the first *max_lines* lines)."""
        self._print(f"   $ {shlex.join(argv)}")
        lines = output.rstrip("\n").splitlines()
        for line in lines[:max_lines]:
            self._print(f"{INDENT}{line}")
        if len(lines) > max_lines:
            self._print(f"{INDENT}[{len(lines) - max_lines} more lines]")

    def verbatim(self, line: str) -> None:
        """A line to copy, indented but never wrapped."""
        self._print(f"{INDENT}{line}")

    def ok(self, text: str) -> None:
        self.checks += 1
        self._print(textwrap.fill(text, WIDTH, initial_indent="  ok ", subsequent_indent=INDENT))

    def check(self, holds: bool, text: str, otherwise: str = "") -> None:
        """Say *text* if it holds; stop the story with *text* and *otherwise* (what was seen) if not."""
        if not holds:
            raise StoryFailed(f"{text}\n{otherwise}".rstrip())
        self.ok(text)

    def record(self, chapter: str, happened: str, did: str, took: str) -> None:
        self.rows.append(Row(chapter, happened, did, took))

    def summary(self) -> None:
        header = Row("", "what happened", "what snf-watcher did", "how long it took")
        widths = (3, 34, 44, 30)
        self.title(f"The story in one table ({self.checks} checks held, {self.elapsed():.0f} s in all)")
        for row in [header, *self.rows]:
            cells = [
                textwrap.wrap(text, width) or [""]
                for text, width in zip((row.chapter, row.happened, row.did, row.took), widths, strict=True)
            ]
            for i in range(max(len(c) for c in cells)):
                parts = [(c[i] if i < len(c) else "").ljust(w) for c, w in zip(cells, widths, strict=True)]
                self._print(" ".join(parts).rstrip())
            if row is header:
                self._print(" ".join("-" * w for w in widths))

    def elapsed(self) -> float:
        return time.monotonic() - self.started


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """`with stopwatch() as took:` ... `took[0]` is the block's duration in seconds afterwards."""
    took = [0.0]
    t0 = time.monotonic()
    try:
        yield took
    finally:
        took[0] = time.monotonic() - t0


def seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.0f} s"
