"""Which Ganeti hooks we install, under which name, and how.

The Debian package ships this layout as hooks.d/; `snf-watcher install-hooks`
makes it for a pip install. Light on purpose: the hook itself imports
HOOK_PATHS on every Ganeti operation.
"""

from __future__ import annotations

import os

HOOKS_DIR = "/etc/ganeti/hooks"
LINK_NAME = "50-snf-ganeti-hook"  # Ganeti runs only names matching ^[a-zA-Z0-9_-]+$
# Post hooks after which an instance's NICs may have changed (or it is gone).
HOOK_PATHS = (
    "instance-add",
    "instance-start",
    "instance-reboot",
    "instance-modify",
    "instance-migrate",
    "instance-failover",
    "instance-remove",
)


def link_paths(hooks_dir: str) -> list[str]:
    return [os.path.join(hooks_dir, f"{hpath}-post.d", LINK_NAME) for hpath in HOOK_PATHS]


def install(hooks_dir: str, executable: str) -> list[str]:
    """Point every hook link at *executable*; replace old links atomically."""
    target = os.path.abspath(executable)
    made = []
    for link in link_paths(hooks_dir):
        os.makedirs(os.path.dirname(link), mode=0o755, exist_ok=True)
        tmp = link + ".new"  # has a dot: Ganeti would not run it even if left behind
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)
        made.append(link)
    return made


def remove(hooks_dir: str) -> list[str]:
    removed = []
    for link in link_paths(hooks_dir):
        if os.path.lexists(link):
            os.unlink(link)
            removed.append(link)
    return removed
