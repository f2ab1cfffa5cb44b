"""Inventories load into checked models; a bad one is one line naming the file, its line, the host and the key.

Also what the SSH backend decides before it touches the network: node-to-host mapping, NAT profile checks,
sanitiser hints, `describe()`, and an unreachable host failing fast with one line naming it.
"""

from __future__ import annotations

import errno
import socket
import textwrap
from pathlib import Path

import pytest

from harness.backends import create_backend
from harness.backends.ssh import SshBackend, load_inventory
from harness.backends.ssh.backend import _NodeState
from harness.backends.ssh.placement import hosts_to_connect, place_nodes
from harness.backends.ssh.remote import connect_error
from harness.errors import BadInput
from harness.models import Node, Topology

INVENTORIES = Path(__file__).resolve().parent.parent / "inventories"

GOOD = """\
all:
  vars:
    ansible_user: dcutr
  hosts:
    relay-vm:
      ansible_host: 198.18.0.10
      dcutr_role: relay
    home-pc:
      ansible_host: 198.18.0.11
      ansible_port: 2222
      dcutr_role: server
      dcutr_nat_profile: openwrt-fw4-fullcone
    home-router:
      ansible_host: 192.168.1.1
      ansible_user: root
      dcutr_role: router
      dcutr_router_of: home-pc
      dcutr_jump: home-pc
    client-vps:
      ansible_host: client.example.net
      dcutr_role: client
"""


def write(tmp_path: Path, text: str, name: str = "inventory.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(BadInput) as caught:
        load_inventory(path)
    message = str(caught.value)
    assert "\n" not in message, message
    assert path.name in message, message
    return message


def phase6_topology(**profiles: str) -> Topology:
    return Topology(
        nodes={
            "relay": Node(role="relay"),
            "server": Node(role="server", nat_profile=profiles.get("server", "openwrt-fw4-fullcone")),
            "client": Node(role="client", nat_profile=profiles.get("client", "port-restricted")),
        }
    )


# -- loading ------------------------------------------------------------------------------------------------


def test_good_inventory_merges_vars(tmp_path):
    inventory = load_inventory(write(tmp_path, GOOD))
    assert list(inventory.hosts) == ["relay-vm", "home-pc", "home-router", "client-vps"]
    assert inventory.hosts["relay-vm"].ansible_user == "dcutr"  # from all.vars
    assert inventory.hosts["home-router"].ansible_user == "root"  # the host's own value wins
    assert inventory.hosts["home-pc"].ansible_port == 2222
    assert inventory.router_of("home-pc").name == "home-router"


def test_shipped_example_loads():
    inventory = load_inventory(INVENTORIES / "fleet.example.yml")
    roles = sorted(h.dcutr_role for h in inventory.hosts.values())
    assert roles == ["client", "jump", "relay", "router", "server"]


def test_local_template_refuses_to_load_unrendered():
    message = error_of(INVENTORIES / "local.yml")
    assert "local.yml:" in message and "is a template" in message


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        pytest.param(
            GOOD.replace("dcutr_role: relay", "dcutr_rol: relay"),
            ":7: all.hosts.relay-vm.dcutr_rol:",
            ["unknown key 'dcutr_rol'", "dcutr_role"],
            id="unknown-dcutr-key",
        ),
        pytest.param(
            GOOD.replace("dcutr_role: client", "dcutr_role: clinet"),
            ":21: all.hosts.client-vps.dcutr_role:",
            ["'clinet'"],
            id="bad-role",
        ),
        pytest.param(
            GOOD.replace("ansible_user: dcutr", "ansible_port: http"),
            ":3: all.vars.ansible_port:",
            ["host 'relay-vm'", "integer"],
            id="bad-shared-var-names-the-host",
        ),
        pytest.param(
            GOOD.replace("      ansible_host: client.example.net\n", ""),
            ":19: all.hosts.client-vps: required key ansible_host missing",
            [],
            id="missing-host",
        ),
        pytest.param(
            GOOD.replace("openwrt-fw4-fullcone", "fullcone-ish"),
            ":12: all.hosts.home-pc.dcutr_nat_profile:",
            ["unknown NAT profile 'fullcone-ish'", "port-restricted"],
            id="unknown-nat-profile",
        ),
        pytest.param(
            GOOD.replace("      dcutr_role: relay\n", "      dcutr_role: relay\n      dcutr_nat_profile: symmetric\n"),
            "all.hosts.relay-vm.dcutr_nat_profile:",
            ["relay must be public"],
            id="relay-behind-nat",
        ),
        pytest.param(
            GOOD.replace("      dcutr_router_of: home-pc\n", ""),
            "all.hosts.home-router.dcutr_role:",
            ["needs dcutr_router_of"],
            id="router-without-lan-host",
        ),
        pytest.param(
            GOOD.replace("dcutr_router_of: home-pc", "dcutr_router_of: nas"),
            "all.hosts.home-router.dcutr_router_of:",
            ["'nas'"],
            id="router-of-unknown-host",
        ),
        pytest.param(
            GOOD.replace("      dcutr_role: server\n", "      dcutr_role: server\n      dcutr_jump: home-router\n"),
            "all.hosts.home-pc.dcutr_jump:",
            ["loop", "home-pc -> home-router -> home-pc"],
            id="jump-loop",
        ),
        pytest.param(
            GOOD.replace("ansible_host: 198.18.0.10", 'ansible_host: "{{ relay_ip }}"'),
            "all.hosts.relay-vm.ansible_host:",
            ["template"],
            id="unrendered-template",
        ),
        pytest.param(
            GOOD.replace("ansible_host: 198.18.0.10", "ansible_host: dcutr@198.18.0.10"),
            "all.hosts.relay-vm.ansible_host:",
            ["ansible_user"],
            id="user-in-host",
        ),
        pytest.param(
            GOOD.replace(
                "      ansible_host: client.example.net\n",
                "      ansible_host: client.example.net\n      ansible_ssh_common_args: -o ProxyCommand=nc\n",
            ),
            "all.hosts.client-vps.ansible_ssh_common_args:",
            ["ProxyCommand is not supported", "ProxyJump"],
            id="proxycommand",
        ),
        pytest.param(
            GOOD.replace(
                "      ansible_host: client.example.net\n",
                "      ansible_host: client.example.net\n      ansible_ssh_extra_args: -o ForwardAgent=yes\n",
            ),
            "all.hosts.client-vps.ansible_ssh_extra_args:",
            ["'ForwardAgent' is not supported"],
            id="unsupported-ssh-option",
        ),
        pytest.param(
            GOOD.replace("  vars:\n", "  children:\n    relays: []\n  vars:\n"),
            ":3: all.children.relays:",
            ["must be a mapping"],
            id="group-not-a-mapping",
        ),
        pytest.param("- just\n- a list\n", "inventory.yml", ["mapping"], id="not-a-mapping"),
        pytest.param("relays:\n  hosts: {}\n", "all.hosts:", ["no hosts"], id="top-level-group-without-hosts"),
        pytest.param("all:\n  hosts: {}\n", "all.hosts:", ["no hosts"], id="no-hosts"),
    ],
)
def test_bad_inventory_is_one_line_naming_file_and_field(tmp_path, text, where, words):
    message = error_of(write(tmp_path, text))
    assert where in message, message
    for word in words:
        assert word in message, message


def test_password_never_shows(tmp_path):
    text = GOOD.replace("ansible_user: dcutr", "ansible_user: dcutr\n    ansible_password: hunter2-secret")
    inventory = load_inventory(write(tmp_path, text))
    assert "hunter2" not in repr(inventory)
    assert inventory.hosts["relay-vm"].ansible_password.get_secret_value() == "hunter2-secret"
    # An error about another key of a host with a password does not print it either.
    broken = text.replace("dcutr_role: client", "dcutr_role: 7")
    assert "hunter2" not in error_of(write(tmp_path, broken, "broken.yml"))


def test_ansible_ssh_pass_is_an_alias_and_not_both(tmp_path):
    text = GOOD.replace("ansible_user: dcutr", "ansible_user: dcutr\n    ansible_ssh_pass: pw")
    assert load_inventory(write(tmp_path, text)).hosts["home-pc"].ansible_password is not None
    both = text.replace("ansible_ssh_pass: pw", "ansible_ssh_pass: pw\n    ansible_password: pw2")
    assert "not both" in error_of(write(tmp_path, both, "both.yml"))


def test_become_password_is_refused(tmp_path):
    text = GOOD.replace("ansible_user: root", "ansible_user: admin\n      ansible_become_password: pw")
    assert "sudo -n" in error_of(write(tmp_path, text))


# -- the backend before the network ---------------------------------------------------------------------------


def test_create_backend_ssh_needs_an_inventory(tmp_path):
    with pytest.raises(BadInput, match="--inventory"):
        create_backend("ssh", run_id="r1")
    backend = create_backend("ssh", run_id="r1", inventory=write(tmp_path, GOOD))
    assert isinstance(backend, SshBackend)
    backend.close()
    with pytest.raises(BadInput, match="ssh only"):
        create_backend("docker", run_id="r1", accept_new_host_keys=True)


def test_create_backend_reports_inventory_errors(tmp_path):
    path = write(tmp_path, GOOD.replace("dcutr_role: relay", "dcutr_role: relais"))
    with pytest.raises(BadInput, match=r"inventory\.yml:7: all\.hosts\.relay-vm\.dcutr_role"):
        create_backend("ssh", run_id="r1", inventory=path)


def test_nodes_map_by_name_then_role(tmp_path):
    inventory = load_inventory(write(tmp_path, GOOD))
    assert place_nodes(inventory, phase6_topology()) == {
        "relay": "relay-vm",
        "server": "home-pc",
        "client": "client-vps",
    }
    named = load_inventory(write(tmp_path, GOOD.replace("    client-vps:", "    client:"), "named.yml"))
    assert place_nodes(named, phase6_topology())["client"] == "client"


def test_a_host_already_running_a_node_is_not_placed_again(tmp_path):
    inventory = load_inventory(write(tmp_path, GOOD))
    relay_only = Topology(nodes={"relay2": Node(role="relay")})
    assert place_nodes(inventory, relay_only) == {"relay2": "relay-vm"}
    with pytest.raises(BadInput, match="no host for runbook node 'relay2'"):
        place_nodes(inventory, relay_only, taken=["relay-vm"])


def test_jump_hosts_and_routers_are_connected_before_what_rides_on_them(tmp_path):
    text = GOOD.replace(
        "      ansible_host: client.example.net\n",
        "      ansible_host: 10.0.0.7\n      dcutr_jump: bastion\n",
    )
    text += "    bastion:\n      ansible_host: 198.18.0.20\n      dcutr_role: jump\n"
    inventory = load_inventory(write(tmp_path, text))
    order = hosts_to_connect(inventory, place_nodes(inventory, phase6_topology()))
    assert sorted(order) == ["bastion", "client-vps", "home-pc", "home-router", "relay-vm"]
    assert order.index("home-pc") < order.index("home-router")  # the router is reached through home-pc
    assert order.index("bastion") < order.index("client-vps")


@pytest.mark.parametrize(
    ("text", "topology", "words"),
    [
        pytest.param(
            GOOD.replace("dcutr_role: client", "dcutr_role: jump"),
            phase6_topology(),
            ["no host for runbook node 'client'", "dcutr_role: client"],
            id="missing-role",
        ),
        pytest.param(
            GOOD.replace("    relay-vm:", "    server:"),
            phase6_topology(),
            ["host 'server' has dcutr_role relay", "runbook node 'server' is a server"],
            id="name-with-other-role",
        ),
        pytest.param(
            GOOD,
            phase6_topology(server="symmetric"),
            ["host 'home-pc'", "'openwrt-fw4-fullcone'", "'symmetric'", "cannot change its NAT"],
            id="nat-profile-mismatch",
        ),
    ],
)
def test_provision_refuses_a_fleet_that_does_not_fit_before_connecting(tmp_path, text, topology, words):
    backend = SshBackend("r1", write(tmp_path, text))
    with pytest.raises(BadInput) as caught:
        backend.provision(topology)
    message = str(caught.value)
    assert "\n" not in message and "inventory.yml" in message
    for word in words:
        assert word in message, message
    assert backend._remotes == {}


def test_missing_key_file_is_named_at_provision(tmp_path):
    text = GOOD.replace("ansible_user: dcutr", "ansible_user: dcutr\n    ansible_ssh_private_key_file: keys/none")
    backend = SshBackend("r1", write(tmp_path, text), binaries=[])
    with pytest.raises(BadInput, match=r"host 'relay-vm': ansible_ssh_private_key_file .*keys/none: no such file"):
        backend.provision(phase6_topology())


def test_unreachable_host_is_one_line_naming_it(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = tmp_path / "id_ed25519"
    key.write_text("not really a key\n")
    key.chmod(0o600)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    text = f"""\
    all:
      vars:
        ansible_ssh_private_key_file: {key}
        dcutr_known_hosts: {known_hosts}
      hosts:
        relay-vm: {{ansible_host: 127.0.0.1, ansible_port: {port}, dcutr_role: relay}}
    """
    backend = SshBackend("r1", write(tmp_path, text), connect_timeout=2, binaries=[])
    with pytest.raises(BadInput) as caught:  # exit 2: nothing started, the inventory is what to look at
        backend.provision(Topology(nodes={"relay": Node(role="relay")}))
    message = str(caught.value)
    assert "\n" not in message
    assert "inventory.yml:6: host 'relay-vm'" in message and "unreachable" in message and "refused" in message
    assert "127.0.0.1" not in message and "not really" not in message
    assert backend._remotes == {} and backend._closed


def test_sanitise_hints_and_describe_name_no_address(tmp_path):
    backend = SshBackend("r1", write(tmp_path, GOOD))
    backend._nodes = {n: None for n in ("relay", "server", "client")}  # as after provision()
    backend._routers = {"server-router": "home-router"}
    backend._hostnames = {"relay", "ip-10-0-0-5", "Server-Router"}
    hints = backend.sanitise_hints()
    assert hints.users == ("dcutr", "root")
    assert set(hints.hostnames) == {"relay-vm", "home-pc", "home-router", "client-vps", "client.example.net"} | {
        "ip-10-0-0-5"
    }
    described = str(backend.describe())
    for secret in ("198.18", "192.168", "example.net", "dcutr", "home-pc"):
        assert secret not in described.replace("dcutr-lab", ""), described
    backend.close()


def test_scrub_replaces_inventory_addresses_by_aliases_and_others_by_a_placeholder(tmp_path):
    inventory = load_inventory(write(tmp_path, GOOD))
    text = "ssh: connect to 198.18.0.11 via client.example.net failed; 203.0.113.9 answered"
    assert inventory.scrub(text) == "ssh: connect to home-pc via client-vps failed; <address> answered"


@pytest.mark.parametrize(
    ("error", "words"),
    [
        pytest.param(socket.gaierror(-2, "Name or service not known"), ["ansible_host: cannot resolve it"], id="dns"),
        pytest.param(TimeoutError(), ["unreachable through jump host 'home-pc'", "no answer within 3s"], id="timeout"),
        pytest.param(OSError(errno.EHOSTUNREACH, "No route"), ["no route to it"], id="no-route"),
        pytest.param(
            OSError(errno.EPERM, "denied talking to 192.168.1.1 from 10.1.2.3"),
            ["PermissionError", "denied talking to home-router from <address>"],
            id="other-scrubbed",
        ),
    ],
)
def test_connect_errors_name_the_host_and_why_never_its_address(tmp_path, error, words):
    inventory = load_inventory(write(tmp_path, GOOD))
    host = inventory.hosts["home-router"]
    message = connect_error(inventory, host, tmp_path / "known_hosts", error, timeout=3)
    # The line that says where the host is (ansible_host), the host by its alias, and the key to look at.
    assert "inventory.yml:14: host 'home-router' (port 22): " in message and "\n" not in message, message
    for word in words:
        assert word in message, message
    assert "192.168" not in message and "10.1.2.3" not in message


def test_log_lines_wait_for_their_end_even_across_a_split_character():
    state = _NodeState("server", "home-pc")
    text = "first\nsécond\nthird".encode()
    cut = text.index("é".encode()) + 1  # inside the two bytes of é
    state.feed(text[:cut])
    assert state.lines == ["first"]
    state.feed(text[cut:])
    assert state.lines == ["first", "sécond"]
    state.feed(b"\n")
    assert state.lines == ["first", "sécond", "third"] and state.offset == len(text) + 1


def test_a_private_key_readable_by_others_is_refused_as_openssh_would(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("not really a key\n")
    key.chmod(0o644)
    text = GOOD.replace("  vars:\n", f"  vars:\n    ansible_ssh_private_key_file: {key}\n", 1)
    with pytest.raises(BadInput, match=r"readable by others \(mode 644\): chmod 600 it"):
        load_inventory(write(tmp_path, text))
    key.chmod(0o600)
    load_inventory(write(tmp_path, text))


def test_a_second_host_of_a_role_is_refused_at_load(tmp_path):
    """Placement would take one and leave the other out without a word: refused, naming both."""
    text = GOOD + "    client-2:\n      ansible_host: 198.18.0.12\n      dcutr_role: client\n"
    with pytest.raises(BadInput, match=r"client-2\.dcutr_role: role client is client-vps's already"):
        load_inventory(write(tmp_path, text))
