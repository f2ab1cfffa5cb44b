"""Faults on a fleet, in the simulated fleet: each gives one line naming the host and what happened, the rest of
the fleet is cleaned up (no process, no run directory), and the report says which host broke the run and when.

    before anything starts (exit 2/3, three public sshd VMs):  a wrong host key, failed authentication,
                                                                a full disk on upload
    mid-run (the jump-box fleet of test_fleet.py, phase 6):    a host that stops answering (docker pause),
                                                                a host that "reboots" (all its user's processes
                                                                killed, its SSH connections with them)

Their reports go to the test's tmp_path, not reports/: a nightly index must not count a fault put in on
purpose as the scenario failing. The mid-run faults are injected when the engine starts step 6 (wait for the
client to exit): relay and server run, the client has just started. Every test names its negative side too: the
other hosts are asserted clean, and the broken one is asserted to be what the line names (never another host,
never an address).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_fleet import PHASE6, VM_USER, Fleet, _client_key, _sshd, build_fleet

pytestmark = [pytest.mark.fleet, pytest.mark.docker, pytest.mark.timeout(900)]

ISO_TIME = re.compile(r"at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00, \d+\.\ds after provisioning began")


# -- a small fleet: relay, server and client VMs on transit -----------------------------------------------------


def _tmpfs_vm(lab, name: str, size: str):
    """A public VM whose home is a tiny tmpfs (a full disk); removed with the lab by its run label."""
    transit = lab.transit()
    ip = transit.next_ip()
    client = lab.client
    container = client.containers.create(
        lab.image("base"),
        command=["sleep", "infinity"],
        entrypoint=[],
        name=lab.object_name(name),
        hostname=name,
        labels=lab.labels("host"),
        init=True,
        detach=True,
        tmpfs={f"/home/{VM_USER}": f"size={size},mode=0755"},
        network=transit.name,
        networking_config={transit.name: client.api.create_endpoint_config(ipv4_address=ip)},
    )
    container.start()
    container.reload()
    assert container.attrs["NetworkSettings"]["Networks"][transit.name]["IPAddress"] == ip

    class Exec:  # enough of DockerLab's exec/must for _sshd
        def must(self, _name, command, what):
            code, output = container.exec_run(command)
            assert code == 0, f"{what}: {output.decode(errors='replace')}"
            return output.decode()

    return container, ip, Exec()


def small_fleet(lab, directory: Path, *, client_disk: str | None = None):
    """(inventory, known_hosts, key public line, {alias: container name}): three public VMs, strict host keys."""
    key_file, public_key = _client_key(directory)
    base = lab.image("base")
    known, hosts = [], {}
    for alias, name in (("relay-vm", "relay"), ("home-pc", "server"), ("client-vps", "client")):
        if name == "client" and client_disk:
            _container, ip, runner = _tmpfs_vm(lab, name, client_disk)
            host_key = _sshd(runner, name, public_key, VM_USER)
            runner.must(name, ["chown", f"{VM_USER}:", f"/home/{VM_USER}"], "the tmpfs home to its user")
        else:
            ip = lab.public_host(name, image=base).ip
            host_key = _sshd(lab, name, public_key, VM_USER)
        known.append(f"{ip} {host_key}")
        hosts[alias] = (name, ip)
    known_hosts = directory / "known_hosts"
    known_hosts.write_text("".join(line + "\n" for line in known))
    groups = {"relay-vm": "relay", "home-pc": "server", "client-vps": "client"}
    text = f"all:\n  vars:\n    ansible_user: {VM_USER}\n    ansible_ssh_private_key_file: {key_file}\n"
    text += f"    dcutr_known_hosts: {known_hosts}\n  children:\n"
    for alias, (_name, ip) in hosts.items():
        text += f"    {groups[alias]}:\n      hosts:\n        {alias}:\n          ansible_host: {ip}\n"
    inventory = directory / "inventory.yml"
    inventory.write_text(text)
    return inventory, known_hosts, hosts


def _nothing_left(lab, run_id: str, names, *, exec_in=None) -> None:
    for name in names:
        run = exec_in.get(name) if exec_in else None
        listing = (run or lab.exec)(name, ["ls", "-A", f"/home/{VM_USER}/.dcutr-lab"]).output.split()
        assert run_id not in listing, f"{name}: run directory left behind ({listing})"
        processes = (run or lab.exec)(name, ["ps", "-eo", "user,args"]).output
        assert "kaspa_p2p" not in processes and "run.sh" not in processes, f"{name}: left running:\n{processes}"


def _run_refused(lab, inventory: Path, run_dir: Path, error_type):
    """phase 6 on the small fleet, refused before anything starts: (the one line, report.json)."""
    from harness.backends.ssh import SshBackend
    from harness.runbook import load_runbook, run_scenario

    backend = SshBackend(lab.run_id, inventory)
    try:
        with pytest.raises(error_type) as refused:
            run_scenario(load_runbook(PHASE6), "remote_validation", backend, run_dir / "remote_validation")
    finally:
        backend.close()
    message = str(refused.value)
    assert "\n" not in message, message
    return message, json.loads((run_dir / "remote_validation" / "report.json").read_text())


def _another_key_line() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def test_a_wrong_host_key_stops_the_run_naming_the_host(lab, tmp_path: Path) -> None:
    from harness.errors import BadInput

    inventory, known_hosts, hosts = small_fleet(lab, tmp_path)
    client_ip = hosts["client-vps"][1]
    wrong = f"{client_ip} {_another_key_line()}"
    lines = [wrong if line.startswith(client_ip + " ") else line for line in known_hosts.read_text().splitlines()]
    known_hosts.write_text("".join(line + "\n" for line in lines))
    message, report = _run_refused(lab, inventory, tmp_path / "report", BadInput)
    assert "inventory.yml:5: host 'client-vps' (port 22): dcutr_known_hosts: its host key does not match" in message
    assert client_ip not in message and "relay-vm" not in message and "home-pc" not in message
    assert "client-vps" in report["error"] and "does not match" in report["error"]
    assert report["verdict"] == "fail" and report["first_missing"]["checkpoint"] == "setup"
    _nothing_left(lab, lab.run_id, ("relay", "server", "client"))


def test_failed_authentication_stops_the_run_naming_the_host(lab, tmp_path: Path) -> None:
    from harness.errors import BadInput

    inventory, _known_hosts, _hosts = small_fleet(lab, tmp_path)
    stranger = _another_key_line()
    lab.must("server", ["sh", "-c", f"echo '{stranger}' > /home/{VM_USER}/.ssh/authorized_keys"], "other key")
    message, report = _run_refused(lab, inventory, tmp_path / "report", BadInput)
    assert "inventory.yml:4: host 'home-pc' (port 22): ansible_ssh_private_key_file: authentication failed" in message
    assert "client-vps" not in message and "relay-vm" not in message
    assert "home-pc" in report["error"] and "authentication failed" in report["error"]
    _nothing_left(lab, lab.run_id, ("relay", "server", "client"))


def test_a_full_disk_on_upload_names_the_host_and_cleans_the_others(lab, tmp_path: Path) -> None:
    from harness.errors import SetupError

    inventory, _known_hosts, hosts = small_fleet(lab, tmp_path, client_disk="3m")
    message, report = _run_refused(lab, inventory, tmp_path / "report", SetupError)
    assert "inventory.yml:" in message and "host 'client-vps': no space left on its disk for kaspa_p2p_" in message
    assert re.search(r"KiB free \(the partial upload was removed\)$", message), message
    assert "client-vps" in report["error"] and "no space left" in report["error"]
    # relay and server had been prepared and uploaded to: cleaned; the full host too, and no partial file stays.
    container = lab.client.containers.get(lab.object_name("client"))

    def in_client(_name, command):
        from harness.backends.base import ExecResult

        code, output = container.exec_run(command)
        return ExecResult(code, output.decode(errors="replace"))

    _nothing_left(lab, lab.run_id, ("relay", "server", "client"), exec_in={"client": in_client})
    leftovers = in_client("client", ["sh", "-c", f"ls -A /home/{VM_USER}/.dcutr-lab/bin"]).output.split()
    assert not [f for f in leftovers if f.endswith(".part")], leftovers
    uploaded = lab.exec("server", ["ls", f"/home/{VM_USER}/.dcutr-lab/bin"]).output.split()
    assert uploaded, "the server got its binaries before the client's disk filled (the fault came mid-provision)"
    assert hosts


# -- mid-run, on the jump-box fleet -----------------------------------------------------------------------------


@pytest.fixture
def fleet(lab, tmp_path: Path) -> Fleet:
    from harness.runbook import load_runbook

    runbook = load_runbook(PHASE6)
    return build_fleet(lab, tmp_path, {name: node.nat_profile for name, node in runbook.nodes.items()})


def _run_with_fault(fleet: Fleet, lab, run_dir: Path, inject):
    """phase 6 with `inject()` called as the engine starts step 6 (the client just started)."""
    from harness.backends.ssh import SshBackend
    from harness.runbook import load_runbook, run_scenario

    injected = []

    def progress(message: str) -> None:
        if message.startswith("step 6/") and not injected:
            injected.append(message)
            inject()

    backend = SshBackend(lab.run_id, fleet.inventory)
    try:
        result = run_scenario(load_runbook(PHASE6), "remote_validation", backend, run_dir / "fault", progress=progress)
    finally:
        backend.close()
    assert injected, "the fault was never injected"
    report = json.loads((run_dir / "fault" / "report.json").read_text())
    return result, report


def test_a_host_that_stops_answering_mid_run_is_named_and_the_rest_cleaned(fleet: Fleet, lab) -> None:
    container = lab.container("client").get_wrapped_container()
    try:
        result, report = _run_with_fault(fleet, lab, fleet.directory / "report", container.pause)
    finally:
        container.unpause()
    assert result.verdict == "fail" and not result.as_expected
    error = report["error"]
    first = error.split("; collecting artefacts")[0]
    assert "fleet.yml:" in first and "host 'client-vps': became unreachable while reading node client's" in first, error
    assert ISO_TIME.search(first), error
    assert "home-pc" not in first and "relay-vm" not in first
    for real in fleet.addresses.values():
        assert real not in error
    # The rest of the fleet is clean; the paused client (and its router, reached through it) kept theirs.
    fleet.assert_clean(lab.run_id, machines=("relay", "server", "server-router"))
    left = lab.exec("client", ["ls", "-A", f"/home/{VM_USER}/.dcutr-lab"]).output.split()
    assert lab.run_id in left, "the unreachable host cannot have been cleaned: this run's directory must be there"


def test_a_host_that_reboots_mid_run_is_named_and_cleaned_up_too(fleet: Fleet, lab) -> None:
    def reboot() -> None:
        # What a reboot does to a run: every process of the login user is gone, its SSH connections with them.
        lab.exec(
            "server",
            ["setpriv", f"--reuid={VM_USER}", f"--regid={VM_USER}", "--clear-groups", "sh", "-c", "kill -KILL -1"],
        )

    result, report = _run_with_fault(fleet, lab, fleet.directory / "report", reboot)
    assert result.verdict == "fail" and not result.as_expected
    error = report["error"]
    first = error.split("; collecting artefacts")[0]
    assert "host 'home-pc': lost its processes: node server is gone without an exit code (did it reboot?)" in first
    assert ISO_TIME.search(first), error
    assert "client-vps" not in first and "relay-vm" not in first
    # Reachable again, so cleaned like the rest: no process, no run directory anywhere (its router included).
    fleet.assert_clean(lab.run_id)
