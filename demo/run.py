"""snf-watcher's demo: the whole story on a real Ganeti cluster and Synnefo's database.

    make demo          # as root: installs what it needs, sets the stage, plays the story
    make demo-down     # takes it all away again

`python demo/run.py [--teardown]` plays it (--teardown: take it down at the end, as CI does);
`python demo/run.py down` tears it down. Exit code 0 when every check held, 1 when one did not.
"""

from __future__ import annotations

import argparse
import os
import sys

from cloud import Cloud
from narrator import Narrator, StoryFailed
from sandbox import SandboxError, tail
from story import chapter_1, chapter_2, chapter_3, chapter_4, chapter_5, look_around, set_the_stage

CHAPTERS = (set_the_stage, chapter_1, chapter_2, chapter_3, chapter_4, chapter_5)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo/run.py", description="snf-watcher's demo (run as root)")
    p.add_argument("command", nargs="?", choices=("play", "down"), default="play")
    p.add_argument("--teardown", action="store_true", help="take everything down after the story")
    return p


def play(cloud: Cloud, n: Narrator) -> int:
    n.title(
        "snf-watcher demo: a real Ganeti cluster, Synnefo's database, and what snf-watcher does\n"
        "between them. Every line marked `ok` is a check that held; the first that does not stops the demo."
    )
    if cloud.exists:
        n.say(f"An earlier demo is still up in {cloud.paths.root}: taking it down first.")
        cloud.down()
    try:
        for chapter in CHAPTERS:
            chapter(cloud, n)
    except (StoryFailed, SandboxError) as e:
        print(f"\nFAILED  {e}", file=sys.stderr)
        for log in ("snf-ganeti-eventd.log", "snf-watcher.log"):
            print(f"\n--- the tail of {cloud.paths.logs / log} ---", file=sys.stderr)
            print(tail(cloud.paths.logs / log, 25), file=sys.stderr)
        print(f"\nEverything stays up for a look ({cloud.paths.root}); `make demo-down` removes it.")
        return 1
    n.summary()
    look_around(cloud, n)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.geteuid() != 0:
        print(
            "demo/run.py: run it as root: it installs Ganeti's hooks in /etc/ganeti and runs a Ganeti "
            "cluster in network namespaces of its own",
            file=sys.stderr,
        )
        return 2
    cloud = Cloud()
    if args.command == "down":
        for line in cloud.down():
            print(line)
        return 0
    try:
        return play(cloud, Narrator())
    finally:
        if args.teardown:
            print("\nTaking it all down (--teardown):")
            for line in cloud.down():
                print(f"  {line}")


if __name__ == "__main__":
    sys.exit(main())
