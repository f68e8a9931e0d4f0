"""Ganeti's ssconf files: which node is the master, and is it this one?

Every master candidate runs the hooks, eventd and the cron watcher, and all of
them act only while their node is the master, so each asks here first. Standard
library only, and nothing is resolved unless it must be: hooks import this on
every Ganeti operation.
"""

from __future__ import annotations

import os


def read(ssconf_dir: str, key: str) -> str | None:
    """One ssconf value (`ssconf_<key>`), or None when the file is missing or empty."""
    try:
        with open(os.path.join(ssconf_dir, f"ssconf_{key}")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def is_master(master: str | None, node_name: str | None) -> bool:
    """Whether *master* (ssconf_master_node) names this node.

    *node_name* is the config's ganeti.node_name; without it, this host's name,
    resolved to its FQDN only when the short names agree and the long ones do not.
    """
    if not master:
        return False
    if node_name:
        return master == node_name
    host = os.uname().nodename
    if master == host:
        return True
    if master.split(".")[0] != host.split(".")[0]:
        return False
    import socket  # only when the short names agree and the long ones need resolving

    return master == socket.getfqdn()
