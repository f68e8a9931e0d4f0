"""snf-progress-monitor: snf-image's progress stream -> progress messages in the spool.

snf-image pipes a stream of concatenated JSON objects (no separators
guaranteed) into this command, with the instance name as the only argument.
The monitor must read to the end whatever happens: if it stopped early,
snf-image would die of SIGPIPE in the middle of an installation. So a bad
object is logged and skipped, never fatal.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from snf_watcher import DEFAULT_CONFIG, __version__, config, config_path, logs, messages, spool

log = logging.getLogger("snf-progress-monitor")
_decoder = json.JSONDecoder()
CHUNK = 4096
NEAR_END = 16  # long enough for a cut "-Infinity" or a "\\uXXXX\\uXXXX" surrogate pair
MAX_OBJECT = 1 << 20  # a "truncated" object this long is garbage, not slow input


def decode_stream(buffer: str, final: bool = False) -> tuple[list[Any], list[str], str]:
    """Split concatenated JSON objects off the front of *buffer*.

    Returns (objects, errors, rest): *rest* is a truncated object that the
    next chunk may complete. Anything else that does not parse is reported
    and skipped up to the next "{"; at the end of the stream (*final*) a
    truncated rest is reported too.
    """
    objects: list[Any] = []
    errors: list[str] = []
    pos = 0
    while True:
        while pos < len(buffer) and buffer[pos].isspace():
            pos += 1
        if pos == len(buffer):
            return objects, errors, ""
        try:
            obj, pos = _decoder.raw_decode(buffer, pos)
        except json.JSONDecodeError as e:
            if not final and len(buffer) - pos <= MAX_OBJECT and _truncated(buffer, e):
                return objects, errors, buffer[pos:]
            errors.append(f"not JSON at {buffer[pos : pos + 40]!r}: {e.msg}")
            pos = buffer.find("{", pos + 1)
            if pos < 0:
                return objects, errors, ""
            continue
        objects.append(obj)


def _truncated(buffer: str, e: json.JSONDecodeError) -> bool:
    """Could parsing have failed only because the input stops early (more may come)?

    An unterminated string runs to the end of the buffer; any other error
    within the last few characters (a cut literal, number or escape)
    may be completed too. Garbage further back is reported at once.
    """
    return e.msg.startswith("Unterminated string") or len(buffer) - e.pos <= NEAR_END


def to_messages(instance: str, objects: list[Any], now: float) -> tuple[list[dict[str, Any]], list[str]]:
    out, errors = [], []
    for obj in objects:
        if not isinstance(obj, dict):
            errors.append(f"not an object: {obj!r:.60}")
            continue
        try:
            out.append(messages.progress(instance, obj, messages.split_time(now)))
        except ValueError as e:
            errors.append(str(e))
    return out, errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="snf-progress-monitor",
        description="Read snf-image's JSON progress stream from stdin and store progress "
        "messages for INSTANCE (set PROGRESS_MONITOR=snf-progress-monitor in /etc/default/snf-image).",
    )
    p.add_argument("instance", help="the Ganeti instance being installed, e.g. snf-101")
    p.add_argument("--config", help=f"config file (default: $SNF_WATCHER_CONFIG or {DEFAULT_CONFIG})")
    p.add_argument("--debug", action="store_true", help="log at DEBUG level")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: list[str] | None = None, stdin: Any = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config.load(config_path(args.config))
    except config.ConfigError as e:
        print(f"snf-progress-monitor: {e}", file=sys.stderr)
        _drain(stdin or sys.stdin.buffer)
        return config.EXIT_CONFIG
    logs.setup(cfg.logging, "snf-progress-monitor", args.debug)
    stream = stdin or sys.stdin.buffer
    rest, stored, failed = "", 0, 0
    utf8 = __import__("codecs").getincrementaldecoder("utf-8")(errors="replace")
    while True:
        chunk = stream.read1(CHUNK) if hasattr(stream, "read1") else stream.read(CHUNK)
        final = not chunk
        objects, errors, rest = decode_stream(rest + utf8.decode(chunk, final=final), final=final)
        msgs, bad = to_messages(args.instance, objects, time.time())
        for text in errors + bad:
            failed += 1
            log.warning("%s: skipped: %s", args.instance, text)
        for msg in msgs:
            try:
                spool.write(cfg.outbox.spool_dir, msg)
                stored += 1
            except OSError as e:
                failed += 1
                log.error("%s: cannot store progress message: %s", args.instance, e)
        if final:
            break
    log.info("%s: %d progress messages stored, %d skipped", args.instance, stored, failed)
    return 0


def _drain(stream: Any) -> None:
    while stream.read(CHUNK):
        pass


if __name__ == "__main__":
    sys.exit(main())
