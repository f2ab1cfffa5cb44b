"""The lab itself: isolation between parallel labs, bad input, and cleanup on every path."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from harness.backends.docker import DockerLab, sweep
from harness.errors import BadInput, SetupError
from harness.labels import LABEL_RUN
from harness.nat.profiles import ROUTER_SYSCTLS

pytestmark = pytest.mark.docker


def _objects(client: docker.DockerClient, run_id: str) -> tuple[int, int]:
    label = f"{LABEL_RUN}={run_id}"
    return (
        len(client.containers.list(all=True, filters={"label": label})),
        len(client.networks.list(filters={"label": label})),
    )


def test_two_labs_never_share_a_transit_subnet(images):
    with DockerLab(images=images.__getitem__) as first, DockerLab(images=images.__getitem__) as second:
        a, b = first.transit().subnet, second.transit().subnet
        assert not a.overlaps(b)
        assert a.subnet_of(ipaddress.IPv4Network("198.18.0.0/15"))
        assert first.transit().name != second.transit().name


def test_close_removes_routers_hosts_and_networks(images):
    lab = DockerLab(images=images.__getitem__)
    router = lab.router("r", "port-restricted")
    lab.private_host("h", router)
    assert _objects(lab.client, lab.run_id) == (2, 1)
    lab.close()
    assert _objects(lab.client, lab.run_id) == (0, 0)
    lab.close()  # idempotent


def test_routers_run_with_the_router_sysctls(lab):
    """The router container's kernel has every sysctl of ROUTER_SYSCTLS (Docker applies them at create)."""
    router = lab.router("r", "port-restricted")
    kernel = {
        key: lab.must(router.name, ["cat", f"/proc/sys/{key.replace('.', '/')}"], key).strip() for key in ROUTER_SYSCTLS
    }
    assert kernel == dict(ROUTER_SYSCTLS)
    assert kernel["net.ipv4.ip_forward"] == "1"
    assert kernel["net.ipv4.conf.all.rp_filter"] == "0"
    assert kernel["net.ipv4.conf.default.rp_filter"] == "0"
    assert kernel["net.netfilter.nf_conntrack_tcp_loose"] == "0"


def test_unknown_nat_profile_fails_before_anything_starts(images):
    with DockerLab(images=images.__getitem__) as lab:
        with pytest.raises(BadInput, match=r"unknown NAT profile .fullest-cone.*symmetric"):
            lab.router("r", "fullest-cone")
        assert _objects(lab.client, lab.run_id)[0] == 0


def test_missing_image_is_a_one_line_setup_error(images):
    def resolver(kind: str) -> str:
        return "dcutr-lab/does-not-exist:0" if kind == "router" else images[kind]

    with DockerLab(images=resolver) as lab:
        with pytest.raises(SetupError, match=r"image dcutr-lab/does-not-exist:0 is missing") as caught:
            lab.router("r", "full-cone")
        assert "\n" not in str(caught.value)
        assert _objects(lab.client, lab.run_id)[0] == 0


def _node_processes(client: docker.DockerClient, run_id: str) -> list[int]:
    """Pids (on this machine) of the node processes a run started in its hosts: in a host's pid namespace,
    but started from outside it (the host's own init and its sleep have their parent inside)."""
    pids = []
    for host in client.containers.list(filters={"label": [f"{LABEL_RUN}={run_id}", "dcutr-lab.role=host"]}):
        init = host.attrs["State"]["Pid"]
        with contextlib.suppress(OSError):
            namespace = os.readlink(f"/proc/{init}/ns/pid")
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit() and int(entry.name) != init:
                    with contextlib.suppress(OSError):
                        parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                        inside = os.readlink(entry / "ns" / "pid") == namespace
                        if inside and os.readlink(f"/proc/{parent}/ns/pid") != namespace:
                            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_cli_run_leaves_nothing_behind(images, tmp_path, signum):
    """Ctrl-C or a cancelled CI job in the middle of a run: every container and network is removed."""
    client = docker.from_env()
    run_name = f"sig{signum:02d}p{os.getpid()}"
    run_id = f"{run_name}a1"  # the lab of the run's first attempt
    env = dict(os.environ, DCUTR_LAB_REPORTS=str(tmp_path))
    command = ["run", "runbooks/phase4-mixed-nat.yaml", "--scenario", "mixed_nat", "--run-id", run_name]
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    try:
        # Interrupt once the run has a node process running: routers, hosts and the transit network exist then.
        started = False
        while time.monotonic() < deadline and proc.poll() is None and not started:
            started = bool(_node_processes(client, run_id))
            time.sleep(0.1)
        assert started, f"the run never started a node: {proc.communicate()[0][-2000:]}"
        seen = _node_processes(client, run_id)
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (130, 1, 4), output[-2000:]
    assert _objects(client, run_id) == (0, 0), output[-2000:]
    assert not any(Path(f"/proc/{pid}").exists() for pid in seen), "a node's process outlived its run"
    sweep(client, run_id=run_id)
