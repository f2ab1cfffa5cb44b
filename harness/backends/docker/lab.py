"""The lab's primitives on one Docker daemon: networks, containers, exec, files, veth pairs, addresses, sweep.

`ContainerLab` owns one run's Docker objects and knows nothing of NAT: harness.backends.docker.wiring builds
routers, wires and hosts from these primitives, and harness.backends.docker.backend adapts the result to the
runbook engine. Keeping them apart lets each be read (and changed) for one reason.

Contract and reasons:
- `transit` (the lab's internet) is an `internal=True` Docker bridge network with a subnet from 198.18.0.0/15,
  offered candidate by candidate until Docker accepts one: Docker's IPAM refuses overlaps atomically, so
  parallel labs (pytest-xdist workers, two CLI runs) never share a subnet and need no lock file. Only the relay
  and the routers' WAN sides sit on it, so every packet on it is addressed inside its own subnet and Docker's
  isolation rules let it through.
- LANs are not Docker networks at all: they live inside veth pairs made directly between two containers'
  network namespaces (`veth`), which touch no host bridge or firewall rule; `lan_subnet` only hands out
  readable, distinct /24s.
- Images are resolved, never pulled: a missing local image is a SetupError naming `dcutr-lab images build`.
- Everything carries the labels of `harness.labels`; `close()` removes by handle and then sweeps by the run
  label, so even objects created by a half-finished call are found. An open lab is registered with
  harness.cleanup, so interpreter exit closes one a caller forgot.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import subprocess
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Self

# Ryuk (testcontainers' reaper) needs an image pulled from a registry, which this lab never has.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import docker
import docker.errors
from docker.types import EndpointConfig
from testcontainers.core.container import DockerContainer

from harness import cleanup
from harness import labels as lab_labels
from harness.backends.base import ExecResult
from harness.backends.subnets import NetworkKind, candidates, host_routes, nth_host
from harness.errors import BadInput, LabError, SetupError

ImageResolver = Callable[[str], str]


def docker_client() -> docker.DockerClient:
    from harness.dockerd import connect

    return connect(timeout=120)


def _default_images(kind: str) -> str:
    """`base`, `router`, or `sut-<name>`: the image of that SUT (built in place, or the one built last)."""
    from harness.images import ensure_image, sut_image
    from harness.sut import get_sut

    if kind.startswith("sut-"):
        return sut_image(get_sut(kind.removeprefix("sut-"))).tag
    return ensure_image(kind)


@dataclass
class LabNetwork:
    name: str
    subnet: ipaddress.IPv4Network
    docker_id: str
    _next: int = 10

    def next_ip(self) -> str:
        ip = nth_host(self.subnet, self._next)
        self._next += 1
        return ip


def _container_pid(container: DockerContainer) -> int:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    pid = int(wrapped.attrs["State"]["Pid"])
    if pid <= 0:
        raise SetupError(f"container {wrapped.name} is not running (state {wrapped.attrs['State']['Status']})")
    return pid


def _run_host(command: Sequence[str], what: str) -> None:
    """A command on the lab machine itself (only `ip link` to create veth pairs between namespaces)."""
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise SetupError(f"{what} failed: `{' '.join(command)}`: {result.stderr.strip()}")


class ContainerLab:
    """One run's Docker objects: the transit network and the containers on it or in its veth pairs.

    A context manager; `close()` is idempotent and removes everything carrying this run's label. Subclassed by
    `DockerLab` (harness.backends.docker.wiring), which is what callers use.
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        client: docker.DockerClient | None = None,
        images: ImageResolver | None = None,
    ) -> None:
        if os.geteuid() != 0:
            raise SetupError("the Docker lab creates veth pairs between containers: run it as root")
        self.run_id = run_id or lab_labels.new_run_id()
        self.client = client or docker_client()
        self._images = images or _default_images
        self._containers: dict[str, DockerContainer] = {}
        self._networks: list[LabNetwork] = []
        self._transit: LabNetwork | None = None
        self._lan_index = 0
        self._closed = False
        cleanup.register(self)

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for name in reversed(list(self._containers)):
            self._remove_container(name)
        for network in reversed(self._networks):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                self.client.networks.get(network.docker_id).remove()
        sweep(self.client, run_id=self.run_id)
        cleanup.unregister(self)

    def _remove_container(self, name: str) -> None:
        container = self._containers.pop(name, None)
        if container is None:
            return
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.get_wrapped_container().remove(force=True, v=True)

    # -- naming and images -----------------------------------------------------------------------------

    def object_name(self, what: str) -> str:
        return lab_labels.object_name(self.run_id, what)

    def labels(self, role: str) -> dict[str, str]:
        return lab_labels.run_labels(self.run_id, role=role)

    def image(self, kind: str) -> str:
        return self._images(kind)

    def container(self, name: str) -> DockerContainer:
        try:
            return self._containers[name]
        except KeyError:
            raise BadInput(
                f"no container named {name!r} in lab {self.run_id} ({', '.join(self._containers)})"
            ) from None

    # -- networks --------------------------------------------------------------------------------------

    def transit(self) -> LabNetwork:
        """The lab's internet; created on first use with a subnet no other lab or host route uses."""
        if self._transit is None:
            self._transit = self._create_network("transit", NetworkKind.transit)
        return self._transit

    def _create_network(self, what: str, kind: NetworkKind) -> LabNetwork:
        name = self.object_name(what)
        avoid = host_routes()
        last_error: Exception | None = None
        for attempt, subnet in enumerate(candidates(kind, avoid)):
            if attempt >= 64:
                break
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet))])
            try:
                network = self.client.networks.create(
                    name, driver="bridge", internal=True, ipam=ipam, labels=self.labels(kind.value)
                )
            except docker.errors.APIError as error:
                # Docker refuses a subnet another network holds: that is how parallel labs stay apart.
                if "overlap" in str(error).lower():
                    last_error = error
                    continue
                raise SetupError(f"creating network {name} failed: {error.explanation or error}") from error
            lab_network = LabNetwork(name=name, subnet=subnet, docker_id=network.id)
            self._networks.append(lab_network)
            return lab_network
        raise SetupError(f"no free {kind.value} subnet for network {name}: {last_error}")

    def lan_subnet(self, pool: str | None = None) -> ipaddress.IPv4Network:
        """LANs live only inside veth pairs, so they need no allocation across labs; a distinct /24 per router
        keeps logs readable. A carrier NAT's inside comes from its own pool (RFC 6598 100.64.0.0/10)."""
        self._lan_index += 1
        network = ipaddress.IPv4Network(pool or "192.168.0.0/16")
        return list(network.subnets(new_prefix=24))[self._lan_index]

    # -- containers ------------------------------------------------------------------------------------

    def _start_container(
        self,
        name: str,
        *,
        image: str,
        role: str,
        command: Sequence[str],
        network: LabNetwork | None = None,
        ip: str | None = None,
        network_mode: str | None = None,
        env: Mapping[str, str] | None = None,
        cap_add: Sequence[str] = (),
        sysctls: Mapping[str, str] | None = None,
        entrypoint: Sequence[str] | None = None,
    ) -> DockerContainer:
        if name in self._containers:
            raise LabError(f"container {name!r} already exists in lab {self.run_id}")
        # with_kwargs replaces rather than merges, so every create option goes in this one call.
        kwargs: dict[str, object] = {
            "labels": self.labels(role),
            "hostname": name[:63],
            "init": True,
            "cap_add": list(cap_add),
            "sysctls": dict(sysctls or {}),
            "detach": True,
        }
        if entrypoint is not None:
            kwargs["entrypoint"] = list(entrypoint)
        if network is not None:
            kwargs["network"] = network.name
            kwargs["networking_config"] = {network.name: EndpointConfig("1.41", ipv4_address=ip)}
        else:
            kwargs["network_mode"] = network_mode or "none"
            kwargs.pop("hostname")  # a container sharing another's namespace cannot set its own hostname
        try:
            # Never let Docker reach for a registry: a missing local image is a setup error, not a pull.
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise SetupError(f"image {image} is missing: run `dcutr-lab images build`") from None
        container = (
            DockerContainer(image)
            .with_name(self.object_name(name))
            .with_command(list(command))
            .with_envs(**dict(env or {}))
            .with_kwargs(**kwargs)
        )
        try:
            container.start()
        except docker.errors.ImageNotFound as error:
            raise SetupError(f"image {image} is missing: run `dcutr-lab images build`") from error
        except docker.errors.APIError as error:
            with contextlib.suppress(Exception):
                self.client.containers.get(self.object_name(name)).remove(force=True)
            raise SetupError(f"starting container {name} failed: {error.explanation or error}") from error
        self._containers[name] = container
        return container

    def exec(self, target: str, command: Sequence[str], timeout: float = 30.0) -> ExecResult:
        """Run a command in a lab container, bounded by `timeout` (coreutils `timeout` inside)."""
        wrapped = self.container(target).get_wrapped_container()
        bounded = ["timeout", "--kill-after=2", f"{timeout:g}", *command]
        try:
            code, output = wrapped.exec_run(bounded, demux=False)
        except docker.errors.APIError as error:
            raise LabError(f"exec on {target} failed: {error.explanation or error}") from error
        return ExecResult(exit_code=int(code), output=(output or b"").decode("utf-8", "replace"))

    def must(self, target: str, command: Sequence[str], what: str, timeout: float = 30.0) -> str:
        result = self.exec(target, command, timeout=timeout)
        if result.exit_code != 0:
            raise SetupError(f"{what} on {target} failed (exit {result.exit_code}): {result.output.strip()}")
        return result.output

    def put_file(self, target: str, path: str, content: str) -> None:
        data = content.encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(name=os.path.basename(path))
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        self.must(target, ["mkdir", "-p", os.path.dirname(path)], "mkdir")
        self.container(target).get_wrapped_container().put_archive(os.path.dirname(path), buffer.getvalue())

    def _veth(self, a: str, a_if: str, b: str, b_if: str) -> None:
        """A veth pair with one end in each container's namespace; it dies with them, nothing stays on the host."""
        pid_a, pid_b = _container_pid(self.container(a)), _container_pid(self.container(b))
        _run_host(
            ["ip", "link", "add", a_if, "netns", str(pid_a), "type", "veth", "peer", "name", b_if, "netns", str(pid_b)],
            f"veth {a}:{a_if} <-> {b}:{b_if}",
        )
        self._small_segments(a, a_if)
        self._small_segments(b, b_if)

    def _address(self, target: str, ifname: str, cidr: str) -> None:
        self.must(target, ["ip", "addr", "add", cidr, "dev", ifname], f"address {cidr} on {ifname}")
        self.must(target, ["ip", "link", "set", ifname, "up"], f"link up {ifname}")

    def _small_segments(self, target: str, ifname: str) -> None:
        """No GSO super-frames on this interface: a user-space wire can only pass frames that fit the MTU."""
        self.must(target, ["ip", "link", "set", "dev", ifname, "gso_max_size", "1500"], f"gso_max_size on {ifname}")

    def remove(self, name: str) -> None:
        self._remove_container(name)


def sweep(client: docker.DockerClient | None = None, *, run_id: str | None = None) -> tuple[int, int]:
    """Remove containers, then networks, labelled by the lab (one run, or every run). Returns the counts."""
    client = client or docker_client()
    label = f"{lab_labels.LABEL_RUN}={run_id}" if run_id else lab_labels.LABEL_RUN
    removed_containers = 0
    for container in client.containers.list(all=True, filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True, v=True)
            removed_containers += 1
    removed_networks = 0
    for network in client.networks.list(filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            network.remove()
            removed_networks += 1
    return removed_containers, removed_networks
