#!/usr/bin/env python3
"""Wall time of one snf-ganeti-hook run, against the bare interpreter's start-up.

Ganeti runs the hook synchronously inside every instance operation, so its cost
is what an operation waits for. This runs the installed snf-ganeti-hook with a
recorded instance-start post-hook environment, cleared as Ganeti clears it
(only the GANETI_* variables, PATH, and SNF_WATCHER_CONFIG / SNF_WATCHER_RUNDIR
for a temp config and runtime dir), interleaved with `python3 -c pass` of the
interpreter in the hook's #! line, under the same environment. Each hook run
must exit 0, say nothing on stderr and leave one spool file.

Target: mean hook time within 2x of the mean `-c pass` time.
Extra (no target): the same with Debian's /usr/bin/python3 running the hook
from this source tree, when that interpreter can import it. `--hook
/usr/bin/snf-ganeti-hook` times the Debian package's hook as installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import benchlib

TARGET_RATIO = 2.0
ENV_FIXTURE = "instance-start-post.startup"
GANETI_PATH = "/sbin:/bin:/usr/sbin:/usr/bin"  # what Ganeti's hooks runner leaves in PATH
DEBIAN_PYTHON = "/usr/bin/python3"
HOOK_CODE = "from ganeti_hooks.hook import main; main()"


def hook_env(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The cleared hook environment, and the recorded GANETI_* variables alone."""
    ganeti = {}
    for line in (benchlib.HOOK_FIXTURES / f"{ENV_FIXTURE}.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("GANETI_"):
            ganeti[key] = value
    cfg = root / "snf-watcher.yaml"
    cfg.write_text(
        "ganeti:\n"
        f"  node_name: {json.dumps(ganeti['GANETI_MASTER'])}\n"
        "outbox:\n"
        f"  path: {json.dumps(str(root / 'outbox.sqlite'))}\n"
        f"  spool_dir: {json.dumps(str(root / 'spool'))}\n"
    )
    (root / "spool").mkdir()
    env = dict(ganeti, PATH=GANETI_PATH, SNF_WATCHER_CONFIG=str(cfg), SNF_WATCHER_RUNDIR=str(root / "run"))
    return env, ganeti


def clear_spool(spool: Path) -> None:
    for p in spool.iterdir():
        p.unlink()


def measure(
    hook: list[str], base: list[str], env: dict[str, str], runs: int
) -> tuple[list[float], list[float], list[str]]:
    """Interleaved runs (hook first on even rounds, baseline first on odd ones); problems seen."""
    hook_t, base_t, problems = [], [], []
    for i in range(runs):
        pair = [(hook, hook_t), (base, base_t)]
        if i % 2:
            pair.reverse()
        for argv, out in pair:
            seconds, rc, err = benchlib.run_wall(argv, env)
            if rc != 0 or err:
                problems.append(f"{' '.join(argv)[:60]}: exit {rc}, stderr {err[:300]!r}")
            out.append(seconds)
    return hook_t, base_t, problems


def measure_after_warmup(
    hook: list[str], base: list[str], env: dict[str, str], runs: int, warmup: int, spool: Path
) -> tuple[list[float], list[float], list[str]]:
    """Warm-up runs (the first hook writes the settings cache, as on a node), a clean spool, timed runs."""
    _, _, problems = measure(hook, base, env, warmup)
    clear_spool(spool)
    hook_t, base_t, more = measure(hook, base, env, runs)
    return hook_t, base_t, problems + more


def check_spool(spool: Path, expected: int, instance: str) -> tuple[bool, str]:
    files = sorted(p for p in spool.iterdir() if p.name.endswith(".msg") and not p.name.startswith("."))
    if len(files) != expected:
        return False, f"{len(files)} spool files, {expected} expected"
    msg = json.loads(files[-1].read_bytes())
    ok = msg.get("type") == "ganeti-net-status" and msg.get("instance") == instance
    return (
        ok,
        f"{len(files)} spool files; last one: {msg.get('type')} for {msg.get('instance')}, "
        f"{len(msg.get('nics', []))} NICs",
    )


def stats_line(name: str, times: list[float]) -> str:
    ms = [t * 1000 for t in times]
    return (
        f"{name:<34} mean {statistics.mean(ms):6.2f} ms  median {statistics.median(ms):6.2f} ms  "
        f"p95 {benchlib.percentile(ms, 95):6.2f} ms  (min {min(ms):.2f}, max {max(ms):.2f})"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=200, help="timed runs of each (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed runs of each first (default 20)")
    p.add_argument("--tmpdir", help="where to make the temp dir (default: $TMPDIR or /tmp)")
    p.add_argument("--no-debian", action="store_true", help=f"skip the extra {DEBIAN_PYTHON} figures")
    p.add_argument(
        "--hook",
        help="the hook to time, e.g. /usr/bin/snf-ganeti-hook of the Debian package "
        "(default: the one installed beside this interpreter)",
    )
    args = p.parse_args()

    hook_cmd = args.hook or benchlib.command("snf-ganeti-hook")
    interpreter = benchlib.shebang_interpreter(hook_cmd)
    root = Path(tempfile.mkdtemp(prefix="snf-bench-hook-", dir=args.tmpdir))
    report = benchlib.Report("hook_latency: one snf-ganeti-hook run vs `python3 -c pass`")
    try:
        env, ganeti = hook_env(root)
        spool = root / "spool"
        instance = ganeti["GANETI_POST_INSTANCE_NAME"]
        report.info(
            f"hook: {hook_cmd} (#! {interpreter}); env {ENV_FIXTURE}.env: {len(ganeti)} GANETI_* vars + "
            f"PATH, SNF_WATCHER_CONFIG, SNF_WATCHER_RUNDIR; {args.runs} runs each after {args.warmup} "
            "warm-up, interleaved"
        )

        hook_t, base_t, problems = measure_after_warmup(
            [hook_cmd], [interpreter, "-c", "pass"], env, args.runs, args.warmup, spool
        )
        ok_spool, spool_text = check_spool(spool, args.runs, instance)
        cache = (root / "run" / "hook-settings.json").exists()
        ratio = statistics.mean(hook_t) / statistics.mean(base_t)
        report.info(stats_line("snf-ganeti-hook", hook_t))
        report.info(stats_line(f"{interpreter} -c pass", base_t))
        extra_ms = 1000 * (statistics.mean(hook_t) - statistics.mean(base_t))
        report.info(f"ratio of means: {ratio:.2f}x   (the hook costs {extra_ms:.2f} ms over start-up)")
        report.info(f"spool after the timed runs: {spool_text}; settings cache written: {cache}")
        bare = [benchlib.run_wall([interpreter, "-I", "-S", "-c", "pass"], env)[0] for _ in range(50)]
        bare_ms, base_ms = 1000 * statistics.median(bare), 1000 * statistics.median(base_t)
        report.info(
            f"for reference, {interpreter} -I -S -c pass (no site, no .pth files): median {bare_ms:.2f} ms, "
            f"against the baseline's {base_ms:.2f} ms"
        )
        report.target(f"hook mean {ratio:.2f}x of `-c pass` <= {TARGET_RATIO}x", ratio <= TARGET_RATIO)
        report.target(f"every hook run exited 0 with empty stderr ({len(problems)} problems)", not problems)
        report.target(f"one spool file per hook run: {spool_text}", ok_spool)
        for line in problems[:5]:
            report.info(f"  {line}")

        # Extra: Debian's interpreter running the hook from this tree (as the Debian package would).
        if not args.no_debian and os.path.exists(DEBIAN_PYTHON):
            denv = dict(env, PYTHONPATH=str(benchlib.REPO))
            probe = subprocess.run(
                [DEBIAN_PYTHON, "-c", "import ganeti_hooks.hook, yaml"],
                env=denv,
                capture_output=True,
                text=True,
            )
            if probe.returncode != 0:
                report.info(
                    f"extra, {DEBIAN_PYTHON}: cannot import the project ({probe.stderr.strip()[-200:]})"
                )
            else:
                d_hook, d_base, d_problems = measure_after_warmup(
                    [DEBIAN_PYTHON, "-c", HOOK_CODE],
                    [DEBIAN_PYTHON, "-c", "pass"],
                    denv,
                    args.runs,
                    args.warmup,
                    spool,
                )
                d_ok, d_text = check_spool(spool, args.runs, instance)
                report.info(f"extra (no target), {DEBIAN_PYTHON} with PYTHONPATH={benchlib.REPO}:")
                report.info("  " + stats_line(f"{DEBIAN_PYTHON} -c '{HOOK_CODE[:25]}...'", d_hook))
                report.info("  " + stats_line(f"{DEBIAN_PYTHON} -c pass", d_base))
                report.info(
                    f"  ratio of means: {statistics.mean(d_hook) / statistics.mean(d_base):.2f}x; {d_text}"
                    f"{'' if d_ok else ' (WRONG)'}; {len(d_problems)} problems"
                )
                for line in d_problems[:5]:
                    report.info(f"    {line}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
