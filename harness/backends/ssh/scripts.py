"""The POSIX shell the SSH backend runs on a host, as pure functions from arguments to script text.

On each host everything lives under the login user's home:

    ~/.dcutr-lab/bin/<binary>-<sha256[:16]>   content-addressed peer binaries, kept across runs (skip if present)
    ~/.dcutr-lab/<run-id>/                     this run: bin/ (links), run.sh, <node>.log/.env/.pid/.pgid/.exit
                                               (removed by cleanup_script)

Contract: every function returns a script for `sh -c` (the backend always runs POSIX sh, whatever the login
shell); arguments are quoted here, so a node name or a path cannot inject. Nothing here opens a connection:
tests run these very scripts with the local /bin/sh against real processes, so a bug in them shows without
sshd. Processes are found by the ids the wrapper wrote down or by their working directory, never by name.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

from harness.errors import BadInput

REMOTE_ROOT = ".dcutr-lab"  # under the remote user's home
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
q = shlex.quote

# run.sh NODE DIR COMMAND...: the node's process in its own session. The command runs as a child so the wrapper
# outlives it and records its exit code; SIGTERM to the wrapper is passed on to the child.
WRAPPER = r"""#!/bin/sh
# dcutr-lab node wrapper (written by harness.backends.ssh): run.sh NODE DIR COMMAND...
node=$1; dir=$2; shift 2
cd "$dir" || exit 1
echo $$ > "$node.pgid"
if [ -f "$node.env" ]; then set -a; . "./$node.env"; set +a; fi
PATH="$dir/bin:$PATH"; export PATH
"$@" >> "$node.log" 2>&1 < /dev/null &
child=$!
echo "$child" > "$node.pid"
trap 'kill -TERM "$child" 2>/dev/null' TERM INT HUP
while :; do
  wait "$child"; code=$?
  kill -0 "$child" 2>/dev/null || break
done
echo "$code" > "$node.exit.tmp" && mv "$node.exit.tmp" "$node.exit"
"""

# What a run needs on a host that runs nodes; a router needs only the first few (and conntrack, checked when used).
_NEEDED = ("sh", "kill", "mkdir", "rm")
_NEEDED_BY_NODES = ("setsid", "sleep", "timeout", "sha256sum", "ln")


def probe_script(*, router: bool) -> str:
    """Facts about a host as `key=value` lines (see parse_facts): home, machine, hostname, missing=<command>."""
    needed = " ".join(_NEEDED if router else (*_NEEDED, *_NEEDED_BY_NODES))
    return (
        'echo "home=$HOME"; echo "machine=$(uname -m)"; echo "hostname=$(hostname 2>/dev/null || uname -n)"; '
        f'for c in {needed}; do command -v "$c" > /dev/null 2>&1 || echo "missing=$c"; done'
    )


def parse_facts(text: str) -> list[tuple[str, str]]:
    """The `key=value` lines of probe_script's output, in order (a key may repeat: `missing`)."""
    pairs = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            pairs.append((key.strip(), value.strip()))
    return pairs


def prepare_script(home: str, run_dir: str) -> str:
    """The run directory (and its bin/), private to the login user."""
    return f"umask 077 && mkdir -p {q(run_dir)}/bin && chmod 700 {q(f'{home}/{REMOTE_ROOT}')}"


def env_file(env: Mapping[str, str]) -> str:
    """`<node>.env`, sourced by the wrapper: the environment stays off every command line (seeds are secrets)."""
    lines = []
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            raise BadInput(f"environment variable name {key!r} is not valid in a shell")
        lines.append(f"{key}={q(str(value))}\n")
    return "".join(lines)


def start_script(run_dir: str, node: str, command: Sequence[str]) -> str:
    """Start the wrapper detached in its own session; returns at once. A restart appends to the same log."""
    return (
        f"cd {q(run_dir)} && rm -f {q(node)}.exit {q(node)}.exit.tmp {q(node)}.pid {q(node)}.pgid && "
        f"setsid sh ./run.sh {q(node)} {q(run_dir)} {shlex.join(command)} < /dev/null > /dev/null 2>&1 &"
    )


def stop_script(run_dir: str, node: str, timeout: float) -> str:
    """SIGTERM the node's process; after `timeout`, SIGKILL its whole process group (wrapper included, so the
    group cannot have been recycled) and record 137. Leaves `<node>.exit` either way."""
    ticks = max(1, int(timeout * 10))
    return f"""cd {q(run_dir)} 2>/dev/null || exit 0
n={q(node)}
i=0; while [ ! -f "$n.pid" ] && [ ! -f "$n.exit" ] && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done
[ -f "$n.pid" ] || exit 0
[ -f "$n.exit" ] && exit 0
pid=$(cat "$n.pid"); pg=$(cat "$n.pgid" 2>/dev/null)
kill -TERM "$pid" 2>/dev/null
i=0; while [ ! -f "$n.exit" ] && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done
[ -f "$n.exit" ] && exit 0
if [ -n "$pg" ]; then kill -KILL "-$pg" 2>/dev/null; else kill -KILL "$pid" 2>/dev/null; fi
sleep 0.2
[ -f "$n.exit" ] || echo 137 > "$n.exit"
exit 0
"""


def cleanup_script(run_dir: str) -> str:
    """Kill every process still working in the run directory (what this run started: the wrapper cd's there and
    its children inherit that), and the process groups of wrappers still running; then remove the directory.
    Processes are found by that property, never by name; other users' processes are not even readable."""
    return f"""[ -d {q(run_dir)} ] || exit 0
d={q(run_dir)}
cd /
ours() {{
  for p in /proc/[0-9]*; do
    [ "$p/cwd" -ef "$d" ] && echo "${{p#/proc/}}"
  done
}}
groups=""
for f in "$d"/*.pgid; do
  [ -f "$f" ] || continue
  pg=$(cat "$f"); [ -n "$pg" ] && [ "/proc/$pg/cwd" -ef "$d" ] && groups="$groups -$pg"
done
pids=$(ours)
if [ -n "$pids$groups" ]; then
  kill -TERM $groups $pids 2>/dev/null
  i=0; while [ -n "$(ours)" ] && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done
  pids=$(ours)
  kill -KILL $groups $pids 2>/dev/null
fi
rm -rf "$d"
"""


def conntrack_recorder_script(run_dir: str, router: str) -> str:
    """Log a router's conntrack events from now on into `<router>.conntrack.events` (like the Docker backend).
    Does nothing on a router without `conntrack`; works without stdbuf or setsid (busybox routers). The
    recorder works in the run directory, so cleanup_script finds it."""
    return (
        f"cd {q(run_dir)} && command -v conntrack > /dev/null 2>&1 || exit 0; "
        'sb=""; command -v stdbuf > /dev/null 2>&1 && sb="stdbuf -oL"; '
        'ss=""; command -v setsid > /dev/null 2>&1 && ss=setsid; '
        f"$ss sh -c 'echo $$ > {q(router)}.ctpid; exec '\"$sb\"' conntrack -E -p tcp -o timestamp' "
        f">> {q(router)}.conntrack.events 2>&1 < /dev/null &"
    )


def conntrack_events_script(run_dir: str, router: str) -> str:
    return f"cat {q(run_dir)}/{q(router)}.conntrack.events"


CONNTRACK_TABLE = (
    "if command -v conntrack > /dev/null 2>&1; then conntrack -L -p tcp; else cat /proc/net/nf_conntrack; fi"
)
NFT_RULESET = "nft list ruleset"


def route_source_script(toward: str) -> str:
    """The source address the host's kernel picks toward `toward` (output: `... src ADDR ...`)."""
    return f"ip -4 route get {q(toward)} 2>/dev/null"


# The address the SSH session arrived on: the host's own side of the connection.
SESSION_ADDRESS = 'set -- $SSH_CONNECTION; echo "$3"'


def liveness_script(run_dir: str, nodes: Sequence[str]) -> str:
    """`<node> exited|alive|gone` per node: gone is a wrapper that is no longer running but wrote no exit code
    (killed, or the host rebooted). A wrapper is recognised by its pid *and* its working directory, so a pid
    reused after a reboot is not taken for it."""
    names = " ".join(q(n) for n in nodes)
    return f"""d={q(run_dir)}
cd "$d" 2>/dev/null || {{ for n in {names}; do echo "$n gone"; done; exit 0; }}
for n in {names}; do
  pg=$(cat "$n.pgid" 2>/dev/null)
  if [ -f "$n.exit" ]; then echo "$n exited"
  elif [ -n "$pg" ] && [ "/proc/$pg/cwd" -ef "$d" ]; then echo "$n alive"
  else echo "$n gone"; fi
done
"""
