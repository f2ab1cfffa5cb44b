"""The Docker lab's teardown order, against a fake Docker client: containers with an endpoint on a Docker
network leave it one at a time (Docker 20.10's libnetwork deadlocks the daemon when two leave one network at
once, moby/libnetwork#2649); containers that only share a namespace go in parallel."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from harness.backends.docker.lab import ContainerLab, LabContainer


class _Removal:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside: dict[bool, int] = {True: 0, False: 0}
        self.most: dict[bool, int] = {True: 0, False: 0}
        self.removed: list[str] = []

    def container(self, name: str, networked: bool) -> LabContainer:
        def remove(**_: object) -> None:
            with self.lock:
                self.inside[networked] += 1
                self.most[networked] = max(self.most[networked], self.inside[networked])
            time.sleep(0.05)  # long enough for a second removal to overlap if the lab lets it
            with self.lock:
                self.inside[networked] -= 1
                self.removed.append(name)

        return LabContainer(name, SimpleNamespace(remove=remove), networked=networked)  # type: ignore[arg-type]


def _client() -> SimpleNamespace:
    empty = SimpleNamespace(list=lambda **_: [], get=lambda _id: None)
    return SimpleNamespace(containers=empty, networks=empty)


def test_networked_containers_leave_one_at_a_time_and_the_rest_at_once() -> None:
    removal = _Removal()
    lab = ContainerLab("teardown", client=_client())  # type: ignore[arg-type]
    for name, networked in [("relay", True), ("a-router", True), ("a-wire", True), ("a", False),
                            ("a-proc1", False), ("b-proc1", False), ("relay-proc1", False)]:  # fmt: skip
        lab._containers[name] = removal.container(name, networked)
    lab.close()
    assert sorted(removal.removed) == sorted(["relay", "a-router", "a-wire", "a", "a-proc1", "b-proc1", "relay-proc1"])
    assert removal.most[True] == 1, "two containers left the transit network at once"
    assert removal.most[False] > 1, "namespace-sharing containers were removed one by one (slow for nothing)"
    assert not lab._containers
