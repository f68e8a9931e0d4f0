"""The few settings a hook needs, without parsing YAML on every Ganeti operation.

Importing PyYAML and validating the config costs more than the rest of a hook
run together, and Ganeti waits for every hook. So the validated settings a hook
needs are kept in a small JSON file in the runtime directory, stamped with the
config file's identity (device, inode, size, mtime). A hook whose stamp matches
uses it; any change to the config file misses and reloads it through the full
validating loader, which rewrites the cache.
"""

from __future__ import annotations

import json
import os

DEFAULT_RUNDIR = "/run/snf-watcher"
CACHE_NAME = "hook-settings.json"


def rundir() -> str:
    return os.environ.get("SNF_WATCHER_RUNDIR") or DEFAULT_RUNDIR


def stamp(config_path: str) -> list[object]:
    st = os.stat(config_path)
    return [os.path.abspath(config_path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def hook_settings(config_path: str) -> dict[str, object]:
    """Return {"spool_dir", "node_name"} for the config at *config_path*.

    Raises ConfigError (from the full loader) when the config is invalid.
    """
    cache = os.path.join(rundir(), CACHE_NAME)
    current = stamp(config_path)
    try:
        with open(cache, "rb") as f:
            cached = json.loads(f.read())
        if cached.get("stamp") == current:
            return cached["settings"]
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    from snf_watcher import config  # the slow, validating path

    cfg = config.load(config_path)
    settings = {"spool_dir": cfg.outbox.spool_dir, "node_name": cfg.ganeti.node_name}
    _store(cache, {"stamp": current, "settings": settings})
    return settings


def _store(cache: str, content: dict[str, object]) -> None:
    """Best effort: without a writable runtime dir every hook just loads the YAML."""
    try:
        os.makedirs(os.path.dirname(cache), mode=0o700, exist_ok=True)
        tmp = f"{cache}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(content, f)
        os.replace(tmp, cache)
    except OSError:
        pass
