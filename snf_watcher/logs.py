"""Logging as Debian daemons and cron jobs are expected to log.

On a terminal or under systemd (which sets JOURNAL_STREAM) log lines go to
stderr; otherwise (cron) to syslog, falling back to stderr where there is no
/dev/log. Operators who keep logs in files, as Ganeti does, choose target
`file`: one file per program, reopened when logrotate moves it. `--debug`
forces DEBUG.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from snf_watcher.config import LoggingConfig

SYSLOG_SOCKET = "/dev/log"


def use_stderr(target: str) -> bool:
    if target != "auto":
        return target == "stderr"
    return sys.stderr.isatty() or "JOURNAL_STREAM" in os.environ or not os.path.exists(SYSLOG_SOCKET)


def setup(cfg: LoggingConfig, prog: str, debug: bool = False) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    if cfg.target == "file":
        os.makedirs(cfg.dir, mode=0o750, exist_ok=True)
        handler: logging.Handler = logging.handlers.WatchedFileHandler(os.path.join(cfg.dir, f"{prog}.log"))
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {prog}[{os.getpid()}]: %(levelname)s: %(message)s")
        )
    elif use_stderr(cfg.target):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{prog}: %(levelname)s: %(message)s"))
    else:
        handler = logging.handlers.SysLogHandler(
            address=SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
        handler.setFormatter(logging.Formatter(f"{prog}[{os.getpid()}]: %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else cfg.level)
