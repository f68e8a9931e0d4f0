"""snf-ganeti-hook: Ganeti post hooks -> `ganeti-net-status` messages in the spool.

Ganeti runs this synchronously inside every instance operation, with a cleared
environment, and waits for it. So it exits 0 whatever happens to it (its own
failures go to syslog), imports only the standard library's light modules,
and does its I/O as one spool file. The NIC list comes from the GANETI_POST_*
variables, which describe the instance after the operation.
"""

from __future__ import annotations

import os
import sys
import time

from snf_watcher import config_path, hookcache, messages, spool, ssconf
from snf_watcher.hooks import HOOK_PATHS

POST = "GANETI_POST_INSTANCE_"
NIC_FIELDS = ("name", "uuid", "ip", "mac", "mode", "link", "vlan", "bridge")
NETWORK_FIELDS = {"network": "NETWORK_NAME", "network_uuid": "NETWORK_UUID", "subnet": "NETWORK_SUBNET"}


class HookInputError(ValueError):
    """The hook environment lacks something Ganeti always sets."""


def nics_from_env(env: dict[str, str], prefix: str = POST) -> list[dict[str, object]]:
    """The instance's NICs, in index order, from the hook variables."""
    count = env.get(prefix + "NIC_COUNT")
    if count is None or not count.isdigit():
        raise HookInputError(f"{prefix}NIC_COUNT is {count!r}, not a count")
    nics = []
    for i in range(int(count)):
        p = f"{prefix}NIC{i}_"
        if p + "MAC" not in env:
            raise HookInputError(f"{p}MAC missing although NIC_COUNT is {count}")
        nic: dict[str, object] = {"index": i}
        for field in NIC_FIELDS:
            nic[field] = env.get(p + field.upper()) or None
        for field, var in NETWORK_FIELDS.items():
            nic[field] = env.get(p + var) or None
        nics.append(nic)
    return nics


def hook_message(env: dict[str, str], now: float) -> dict[str, object] | None:
    """The message this hook invocation stands for, or None if it is none of ours."""
    path = env.get("GANETI_HOOKS_PATH")
    if env.get("GANETI_HOOKS_PHASE") != "post" or path not in HOOK_PATHS:
        return None
    instance = env.get(POST + "NAME") or env.get("GANETI_INSTANCE_NAME")
    if not instance:
        raise HookInputError(f"no instance name in the {path} hook environment")
    nics = [] if path == "instance-remove" else nics_from_env(env)
    return messages.net_status(
        instance=instance,
        nics=nics,
        event_time=messages.split_time(now),
        cluster=env.get("GANETI_CLUSTER"),
        operation=env.get("GANETI_OP_CODE"),
        hook_path=path,
    )


def build_parser():  # -> argparse.ArgumentParser; only humans pass arguments, so argparse loads only then
    import argparse

    from snf_watcher import DEFAULT_CONFIG, __version__

    parser = argparse.ArgumentParser(
        prog="snf-ganeti-hook",
        description="Ganeti post hook: report an instance's NICs to Synnefo. "
        "Install it under /etc/ganeti/hooks/<hook-path>-post.d/ (the Debian package does).",
    )
    parser.add_argument("--config", help=f"config file (default: $SNF_WATCHER_CONFIG or {DEFAULT_CONFIG})")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def run(argv: list[str], env: dict[str, str]) -> str | None:
    """Do the hook's work; return the spool file written, if any."""
    config_file = build_parser().parse_args(argv).config if argv else None
    message = hook_message(env, time.time())
    if message is None:
        return None
    settings = hookcache.hook_settings(config_path(config_file))
    if not ssconf.is_master(env.get("GANETI_MASTER"), settings["node_name"]):
        return None
    return spool.write(settings["spool_dir"], message)


def main(argv: list[str] | None = None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv, dict(os.environ))
    except SystemExit as e:  # --help, or a usage error from a human caller
        return e.code if isinstance(e.code, int) else 0
    except BaseException as e:  # noqa: BLE001 -- a hook must never fail the Ganeti operation
        report_failure(e, os.environ)
    return 0


def report_failure(error: BaseException, env: os._Environ[str] | dict[str, str]) -> None:
    import syslog

    what = f"{env.get('GANETI_HOOKS_PATH', '?')}-{env.get('GANETI_HOOKS_PHASE', '?')}"
    text = f"{what} for {env.get('GANETI_INSTANCE_NAME', '?')}: {type(error).__name__}: {error}"
    syslog.openlog("snf-ganeti-hook", syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_ERR, text)
    try:
        print(f"snf-ganeti-hook: {text}", file=sys.stderr)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
