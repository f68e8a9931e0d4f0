"""snf-watcher: keep Synnefo's database in step with the Ganeti clusters it runs on.

This package root stays import-light: Ganeti hooks import it on every operation.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

DEFAULT_CONFIG = "/etc/synnefo/snf-watcher.yaml"


def config_path(given: str | None = None) -> str:
    """--config wins, then $SNF_WATCHER_CONFIG, then the Debian default."""
    return given or os.environ.get("SNF_WATCHER_CONFIG") or DEFAULT_CONFIG
