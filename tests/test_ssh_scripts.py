"""The shell the SSH backend runs on a host, run here with the local /bin/sh: start, exit codes, stop, cleanup.

The backend sends exactly these scripts over SSH (`sh -c SCRIPT`), so a bug in them shows here without sshd.
"""

from __future__ import annotations

import os
import platform
import stat
import subprocess
import time
from pathlib import Path

import pytest

from harness.backends.ssh import WRAPPER, cleanup_script, env_file, start_script, stop_script
from harness.backends.ssh.scripts import parse_facts, prepare_script, probe_script
from harness.errors import BadInput


def sh(script: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "run"
    (directory / "bin").mkdir(parents=True)
    (directory / "run.sh").write_text(WRAPPER)
    (directory / "run.sh").chmod(0o700)
    yield directory
    sh(cleanup_script(str(directory)))


def start(run_dir: Path, node: str, command: list[str], env: dict[str, str] | None = None) -> None:
    (run_dir / f"{node}.env").write_text(env_file(env or {}))
    result = sh(start_script(str(run_dir), node, command), timeout=5)  # returns at once: the node is detached
    assert result.returncode == 0, result.stdout + result.stderr


def wait_exit(run_dir: Path, node: str, within: float = 10.0) -> int:
    deadline = time.monotonic() + within
    while not (run_dir / f"{node}.exit").exists():
        assert time.monotonic() < deadline, f"{node} did not exit"
        time.sleep(0.05)
    return int((run_dir / f"{node}.exit").read_text())


def wait_file(path: Path, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split(") ")[1][0] != "Z"


def test_exit_code_and_both_streams_are_recorded(run_dir):
    start(run_dir, "client", ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert wait_exit(run_dir, "client") == 3
    assert (run_dir / "client.log").read_text().splitlines() == ["out", "err"]


def test_env_values_survive_quoting_and_stay_off_the_command_line(run_dir):
    tricky = "a b 'c' \"d\" $HOME `x` \\ ;|&"
    start(run_dir, "relay", ["sh", "-c", 'printf "%s\\n" "$TRICKY"'], {"TRICKY": tricky})
    assert wait_exit(run_dir, "relay") == 0
    assert (run_dir / "relay.log").read_text() == tricky + "\n"
    assert "TRICKY" not in start_script(str(run_dir), "relay", ["x"])


def test_bad_env_name_is_refused():
    with pytest.raises(BadInput, match="not valid"):
        env_file({"A-B": "1"})


def test_run_dir_bin_comes_first_on_path(run_dir):
    (run_dir / "bin" / "kaspa_p2p_relay").write_text("#!/bin/sh\necho uploaded relay\n")
    (run_dir / "bin" / "kaspa_p2p_relay").chmod(0o755)
    start(run_dir, "relay", ["kaspa_p2p_relay"])
    assert wait_exit(run_dir, "relay") == 0
    assert (run_dir / "relay.log").read_text() == "uploaded relay\n"


def test_restart_appends_to_the_log(run_dir):
    start(run_dir, "server", ["echo", "first"])
    wait_exit(run_dir, "server")
    start(run_dir, "server", ["sh", "-c", "echo second; exit 1"])
    assert wait_exit(run_dir, "server") == 1
    assert (run_dir / "server.log").read_text() == "first\nsecond\n"


def test_stop_sends_sigterm_and_records_the_code(run_dir):
    start(run_dir, "relay", ["sh", "-c", "trap 'echo bye; exit 0' TERM; while :; do sleep 0.1; done"])
    wait_file(run_dir / "relay.pid")
    time.sleep(0.2)  # let the trap be installed
    result = sh(stop_script(str(run_dir), "relay", 5.0))
    assert result.returncode == 0
    assert wait_exit(run_dir, "relay", within=1) == 0
    assert "bye" in (run_dir / "relay.log").read_text()


def test_stop_kills_what_ignores_sigterm_and_its_group(run_dir):
    start(run_dir, "server", ["sh", "-c", "trap '' TERM; sleep 60 & echo $! > child.pid; wait"])
    wait_file(run_dir / "child.pid")
    child = int((run_dir / "child.pid").read_text())
    began = time.monotonic()
    sh(stop_script(str(run_dir), "server", 0.5))
    assert time.monotonic() - began < 6
    assert wait_exit(run_dir, "server", within=1) == 137
    time.sleep(0.2)
    assert not alive(child), "a grandchild survived the process-group kill"


def test_stop_before_start_and_after_exit_is_harmless(run_dir):
    assert sh(stop_script(str(run_dir), "nobody", 1.0)).returncode == 0
    start(run_dir, "client", ["true"])
    wait_exit(run_dir, "client")
    assert sh(stop_script(str(run_dir), "client", 1.0)).returncode == 0
    assert wait_exit(run_dir, "client") == 0


def test_cleanup_kills_running_nodes_and_removes_the_run_dir(run_dir):
    start(run_dir, "relay", ["sleep", "60"])
    start(run_dir, "server", ["sh", "-c", "trap '' TERM; sleep 60"])
    wait_file(run_dir / "relay.pid")
    wait_file(run_dir / "server.pid")
    pids = [int((run_dir / f"{n}.pid").read_text()) for n in ("relay", "server")]
    result = sh(cleanup_script(str(run_dir)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not run_dir.exists()
    time.sleep(0.2)
    assert not any(alive(pid) for pid in pids)
    assert sh(cleanup_script(str(run_dir))).returncode == 0  # idempotent


def test_probe_reports_home_machine_hostname_and_what_is_missing(tmp_path):
    facts = parse_facts(sh(probe_script(router=False)).stdout)
    values = dict(facts)
    assert values["home"] == os.environ["HOME"]
    assert values["machine"] == platform.machine()
    assert values["hostname"] == platform.node()
    assert [v for k, v in facts if k == "missing"] == []  # this machine has every prerequisite
    # A host without setsid or sha256sum is told so, by name, one `missing=` a command.
    (tmp_path / "sh").symlink_to(os.path.realpath("/bin/sh"))
    env = {"PATH": str(tmp_path), "HOME": "/nowhere"}
    done = subprocess.run([str(tmp_path / "sh"), "-c", probe_script(router=False)], env=env, capture_output=True)
    missing = [v for k, v in parse_facts(done.stdout.decode()) if k == "missing"]
    assert {"setsid", "timeout", "sha256sum", "mkdir"} <= set(missing) and "sh" not in missing
    router = [v for k, v in parse_facts(sh(probe_script(router=True)).stdout) if k == "missing"]
    assert router == []


def test_prepare_makes_the_run_directory_private(tmp_path):
    home = tmp_path / "home"
    run_dir = home / ".dcutr-lab" / "my run"
    assert sh(prepare_script(str(home), str(run_dir))).returncode == 0
    assert (run_dir / "bin").is_dir()
    assert stat.S_IMODE((home / ".dcutr-lab").stat().st_mode) == 0o700
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700  # umask 077: nothing in it readable by others
