"""Inventories the Ansible way: groups as roles, nested children, group vars with Ansible's precedence, INI and
the JSON of `ansible-inventory --list`, ssh options as jump chains; and `dcutr-lab inventory check`.

Where ansible-core is installed (a test dependency) the same files are read by Ansible too, and both readings must
agree; every positive case has the negative one next to it (a typo'd group, a conflicting chain, an option we
cannot honour).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import jinja2
import pytest

from harness.backends.ssh import load_inventory
from harness.backends.ssh.ansible_parser import compare_with_ansible, read_with_ansible
from harness.backends.ssh.inventory import resolve
from harness.backends.ssh.sshargs import Hop, SshArgsError, parse_jump, parse_ssh_args
from harness.cli import main
from harness.errors import BadInput

INVENTORIES = Path(__file__).resolve().parent.parent / "inventories"


def _needs_ansible(test):
    """ansible-core is a test dependency: its absence fails these tests rather than skipping them."""

    def wrapper(*args, **kwargs):
        assert shutil.which("ansible-inventory"), "ansible-inventory is missing: pip install -e '.[test]'"
        return test(*args, **kwargs)

    import functools

    return functools.wraps(test)(wrapper)


needs_ansible = _needs_ansible

NESTED = """\
all:
  vars:
    ansible_user: fromall
    ansible_port: 2200
    dcutr_nat_profile: none
  children:
    relay:
      hosts:
        r1: {ansible_host: 198.18.0.10}
    private:
      vars:
        ansible_user: fromprivate
        ansible_port: 2201
        dcutr_nat_profile: port-restricted
      children:
        server:
          vars:
            ansible_port: 2202
          hosts:
            s1:
              ansible_host: 198.18.0.11
              dcutr_nat_profile: openwrt-fw4
        client:
          hosts:
            c1: {ansible_host: 198.18.0.12, ansible_user: own}
    unrelated:
      hosts:
        db1: {ansible_host: 10.9.9.9, ansible_port: "{{ not_ours }}"}
"""


def write(tmp_path: Path, text: str, name: str = "inventory.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(BadInput) as caught:
        load_inventory(path)
    message = str(caught.value)
    assert "\n" not in message and path.name in message, message
    return message


def render_local(tmp_path: Path) -> Path:
    template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string((INVENTORIES / "local.yml").read_text())
    text = template.render(
        key_file="id_ed25519",
        known_hosts="known_hosts",
        relay_ip="198.18.0.2",
        jump_ip="198.18.0.3",
        server_wan_ip="198.18.0.4",
        client_wan_ip="198.18.0.5",
        server_router_lan_ip="192.168.1.1",
        client_router_lan_ip="192.168.2.1",
    )
    return write(tmp_path, text, "local.yml")


# -- groups and precedence ----------------------------------------------------------------------------------


def test_groups_give_roles_and_precedence_is_ansibles(tmp_path):
    inventory = load_inventory(write(tmp_path, NESTED))
    hosts = inventory.hosts
    assert {n: h.dcutr_role for n, h in hosts.items()} == {"r1": "relay", "s1": "server", "c1": "client"}
    # host over child group over parent group over all
    assert hosts["s1"].ansible_port == 2202 and inventory.origin("s1", "ansible_port").source == "group server"
    assert hosts["c1"].ansible_port == 2201 and inventory.origin("c1", "ansible_port").source == "group private"
    assert hosts["r1"].ansible_port == 2200 and inventory.origin("r1", "ansible_port").source == "all"
    assert hosts["c1"].ansible_user == "own" and inventory.origin("c1", "ansible_user").source == "host"
    assert hosts["s1"].dcutr_nat_profile == "openwrt-fw4"
    assert hosts["c1"].dcutr_nat_profile == "port-restricted"
    assert inventory.origin("s1", "dcutr_role").source == "group server"
    assert inventory.origin("s1", "ansible_port").where.line == 18
    assert hosts["s1"].groups == ("private", "server")
    # A host in no role group is not part of the lab, and its templated port is none of our business.
    assert "db1" not in hosts and "db1" in inventory.ignored


def test_dcutr_role_overrides_the_group(tmp_path):
    text = NESTED.replace("c1: {ansible_host: 198.18.0.12, ansible_user: own}", "c1: {ansible_host: 198.18.0.12}")
    text = text.replace("        client:\n", "        client:\n          vars: {dcutr_role: server}\n")
    # Now two servers: the second is refused, naming both, instead of one being silently left out.
    with pytest.raises(BadInput, match="host 'c1': role server is s1's already: one host a role"):
        load_inventory(write(tmp_path, text))
    alone = text.replace(
        "            s1:\n              ansible_host: 198.18.0.11\n              dcutr_nat_profile: openwrt-fw4\n", ""
    )
    inventory = load_inventory(
        write(
            tmp_path,
            alone.replace(
                "server:\n          vars:\n            ansible_port: 2202\n          hosts:\n",
                "server:\n          vars:\n            ansible_port: 2202\n",
            ),
            "b.yml",
        )
    )
    assert inventory.hosts["c1"].dcutr_role == "server"
    assert inventory.origin("c1", "dcutr_role").source == "group client"


def test_group_priority_orders_groups_of_one_depth(tmp_path):
    text = """\
    all:
      children:
        relay:
          hosts: {r1: {ansible_host: 198.18.0.10}}
        aaa:
          vars: {ansible_port: 1111, ansible_group_priority: 10}
          hosts: {r1: null}
        zzz:
          vars: {ansible_port: 2222}
          hosts: {r1: null}
    """
    # By name zzz would win; its lower priority makes aaa win, as in Ansible.
    assert load_inventory(write(tmp_path, text)).hosts["r1"].ansible_port == 1111
    assert load_inventory(write(tmp_path, text.replace("10}", "1}"), "b.yml")).hosts["r1"].ansible_port == 2222


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        pytest.param(
            NESTED.replace(
                "c1: {ansible_host: 198.18.0.12, ansible_user: own}", "c1: {ansible_host: 198.18.0.12}\n            s1:"
            ),
            ":20: all.children.private.children.server.hosts.s1:",
            ["in groups client and server", "dcutr_role"],
            id="two-role-groups",
        ),
        pytest.param(
            NESTED.replace("    relay:\n", "    relais:\n"),
            "inventory.yml",
            ["no host for", "relay"],
            id="typo-in-role-group-leaves-no-relay",
        ),
        pytest.param(
            NESTED.replace("ansible_port: 2202", "dcutr_port: 2202"),
            ":18: all.children.private.children.server.vars.dcutr_port: host 's1':",
            ["unknown key 'dcutr_port'"],
            id="unknown-dcutr-key-in-group-vars",
        ),
        pytest.param(
            NESTED.replace("        client:\n", "        client:\n          children: {private: null}\n"),
            "all.children.private",
            ["loop", "private -> client -> private"],
            id="group-loop",
        ),
        pytest.param(
            NESTED.replace("      vars:\n        ansible_user: fromprivate", "      varz:\n        ansible_user: x"),
            ":11: all.children.private.varz:",
            ["unknown key 'varz'"],
            id="unknown-group-key",
        ),
        pytest.param(
            NESTED.replace("r1: {ansible_host: 198.18.0.10}", "relay[1:3]: {ansible_host: 198.18.0.10}"),
            "all.children.relay.hosts.relay[1:3]:",
            ["host ranges are not read"],
            id="host-range",
        ),
    ],
)
def test_bad_group_inventories_are_one_line(tmp_path, text, where, words):
    path = write(tmp_path, text)
    if "no host for" in words:
        from harness.backends.ssh.placement import place_nodes
        from harness.models import Node, Topology

        inventory = load_inventory(path)
        assert "r1" in inventory.ignored  # check shows it; placement refuses it
        with pytest.raises(BadInput) as caught:
            place_nodes(inventory, Topology(nodes={"relay": Node(role="relay")}))
        message = str(caught.value)
    else:
        message = error_of(path)
    assert where in message, message
    for word in words:
        assert word in message, message


# -- INI and JSON --------------------------------------------------------------------------------------------


INI = """\
# a comment
[relay]
r1 ansible_host=198.18.0.10

[server]
s1:2202 ansible_host=198.18.0.11 dcutr_nat_profile=openwrt-fw4

[client]
c1 ansible_host=198.18.0.12 ansible_user=own ansible_ssh_common_args="-J jumper@198.18.0.99:2022"

[private:children]
server
client

[private:vars]
ansible_user=fromprivate
ansible_port=2201
dcutr_nat_profile=port-restricted

[all:vars]
ansible_user=fromall
dcutr_nat_profile=none
"""


def test_ini_reads_like_yaml(tmp_path):
    inventory = load_inventory(write(tmp_path, INI, "hosts"))  # no suffix: sniffed as INI
    assert inventory.format == "ini"
    hosts = inventory.hosts
    assert hosts["s1"].ansible_port == 2202 and inventory.origin("s1", "ansible_port").where.line == 6
    assert hosts["c1"].ansible_port == 2201 and inventory.origin("c1", "ansible_port").source == "group private"
    assert hosts["c1"].ansible_user == "own" and hosts["s1"].ansible_user == "fromprivate"
    assert hosts["r1"].ansible_user == "fromall" and hosts["r1"].ansible_port == 22
    assert hosts["s1"].dcutr_nat_profile == "openwrt-fw4" and hosts["c1"].dcutr_nat_profile == "port-restricted"
    assert inventory.jump_chain("c1") == ["c1-jump"]
    jump = hosts["c1-jump"]
    assert (jump.ansible_user, jump.ansible_host, jump.ansible_port, jump.dcutr_role) == (
        "jumper",
        "198.18.0.99",
        2022,
        "jump",
    )


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        pytest.param(INI.replace("[private:children]\nserver", "[private:children]\nsrever"), ":12:", ["'srever'"]),
        pytest.param(INI + "[nogroup:vars]\nx=1\n", ":23: [nogroup:vars]:", ["never declared"]),
        pytest.param(INI.replace("r1 ansible_host=", "r1 ansible_host "), ":3: [relay] r1:", ["key=value"]),
        pytest.param(INI + "[odd:stuff]\n", ":23: [odd:stuff]:", ["unknown section type"]),
        pytest.param(INI.replace("[server]", "[ server ]"), ":5:", ["not a section"]),
    ],
)
def test_bad_ini_is_one_line(tmp_path, text, where, words):
    message = error_of(write(tmp_path, text, "hosts.ini"))
    assert where in message, message
    for word in words:
        assert word in message, message


# -- ssh options ----------------------------------------------------------------------------------------------


def test_ssh_options_parse_like_openssh():
    assert parse_jump("root@jump.example:2200,me@[2001:db8::1]:22") == [
        Hop("root", "jump.example", 2200),
        Hop("me", "2001:db8::1", 22),
    ]
    options = parse_ssh_args("-C -o ControlMaster=auto -o ControlPersist=60s -J a@b -o ProxyJump=c@d")
    assert options.jump == [Hop("a", "b", None)]  # the first value wins, as in OpenSSH
    assert options.no_effect == ["-C", "ControlMaster=auto", "ControlPersist=60s"]
    glued = parse_ssh_args("-Ja@b:2 -oUserKnownHostsFile=kh -o 'ConnectTimeout 7' -o ServerAliveInterval=5")
    assert (glued.jump, glued.known_hosts, glued.connect_timeout, glued.keepalive) == ([Hop("a", "b", 2)], "kh", 7, 5)
    assert parse_ssh_args("-o StrictHostKeyChecking=yes").jump is None
    assert parse_ssh_args("-o ProxyJump=none").jump == []


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ("-o StrictHostKeyChecking=no", ["StrictHostKeyChecking=no", "--accept-new-host-keys"]),
        ("-o ProxyCommand='ssh -W %h:%p x'", ["ProxyCommand"]),
        ("-i ~/.ssh/other", ["'-i' is not supported"]),
        ("-o ForwardAgent=yes", ["'ForwardAgent' is not supported"]),
        ("-J", ["-J needs a value"]),
        ("-J root@", ["expected [user@]host[:port]"]),
        ("-J a:99999", ["port out of range"]),
        ("stray", ["not an ssh option"]),
        ("-o 'unbalanced", ["cannot split"]),
    ],
)
def test_unsupported_ssh_options_are_named(args, words):
    with pytest.raises(SshArgsError) as caught:
        parse_ssh_args(args)
    for word in words:
        assert word in str(caught.value), caught.value


def test_proxyjump_to_an_inventory_host_uses_it_and_chains_resolve(tmp_path):
    path = render_local(tmp_path)
    inventory = load_inventory(path)
    assert inventory.jump_chain("home-pc") == ["nat-jump"]
    assert inventory.jump_chain("client-vps") == ["nat-jump"]  # one jump host for the whole group
    assert inventory.jump_chain("home-router") == ["nat-jump", "home-pc"]
    jump = inventory.hosts["nat-jump"]
    assert (jump.ansible_user, jump.ansible_host, jump.ansible_port) == ("root", "198.18.0.3", 22)
    # The derived jump host is reached with the key and known_hosts of the hosts behind it.
    assert jump.ansible_ssh_private_key_file == "id_ed25519" and jump.dcutr_known_hosts == "known_hosts"
    assert inventory.origin("home-pc", "dcutr_jump").source == "ansible_ssh_common_args (group nat)"
    assert jump.derived_from == "the ssh options of group nat"


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        pytest.param(
            "-J root@{{ jump_ip }},dcutr@{{ server_wan_ip }}:2222",
            "-J dcutr@{{ server_wan_ip }}:2222",
            ["reaches 'home-pc' through 'nothing'", "'home-pc' is reached through 'nat-jump'"],
            id="chain-skips-a-hop",
        ),
        pytest.param(
            "          dcutr_router_of: home-pc\n",
            "          dcutr_router_of: home-pc\n          dcutr_jump: client-vps\n",
            ["ProxyJump ends at 'home-pc', but dcutr_jump is 'client-vps'"],
            id="dcutr-jump-disagrees",
        ),
        pytest.param(
            "-J root@{{ jump_ip }}\n",
            "-J root@{{ jump_ip }} -o StrictHostKeyChecking=accept-new\n",
            ["all.children.nat.vars.ansible_ssh_common_args: host 'home-pc'", "--accept-new-host-keys"],
            id="group-option-refused-names-host",
        ),
    ],
)
def test_conflicting_jump_settings_are_refused(tmp_path, old, new, words):
    text = (INVENTORIES / "local.yml").read_text()
    assert old in text
    (tmp_path / "t.yml").write_text(text.replace(old, new, 1))
    template = jinja2.Environment().from_string((tmp_path / "t.yml").read_text())
    path = write(
        tmp_path,
        template.render(
            key_file="k",
            known_hosts="kh",
            relay_ip="198.18.0.2",
            jump_ip="198.18.0.3",
            server_wan_ip="198.18.0.4",
            client_wan_ip="198.18.0.5",
            server_router_lan_ip="192.168.1.1",
            client_router_lan_ip="192.168.2.1",
        ),
    )
    message = error_of(path)
    for word in words:
        assert word in message, message


# -- Ansible reads them the same ------------------------------------------------------------------------------


def _summary(inventory) -> dict:
    return {
        name: (
            host.dcutr_role,
            host.ansible_host,
            host.ansible_port,
            host.ansible_user,
            host.dcutr_nat_profile,
            host.dcutr_public_ip,
            host.dcutr_router_of,
            [str(inventory.hosts[h].ansible_host) for h in inventory.jump_chain(name)],
        )
        for name, host in inventory.hosts.items()
        if host.derived_from is None
    }


def test_the_yaml_and_ini_examples_are_the_same_inventory():
    assert _summary(load_inventory(INVENTORIES / "fleet.example.yml")) == _summary(
        load_inventory(INVENTORIES / "fleet.example.ini")
    )


@needs_ansible
@pytest.mark.parametrize("name", ["fleet.example.yml", "fleet.example.ini", "local.yml", "nested.yml", "hosts"])
def test_ansible_reads_the_examples_as_we_do(tmp_path, name):
    if name == "local.yml":
        path = render_local(tmp_path)
    elif name == "nested.yml":
        path = write(tmp_path, NESTED, name)
    elif name == "hosts":
        path = write(tmp_path, INI, name)
    else:
        path = INVENTORIES / name
    ours = load_inventory(path)
    assert compare_with_ansible(ours) == []
    theirs = resolve(read_with_ansible(path))
    assert _summary(theirs) == _summary(ours)
    # The JSON Ansible prints is an inventory dcutr-lab reads too, to the same hosts.
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps(json.loads(subprocess.check_output(["ansible-inventory", "-i", str(path), "--list"]))))
    assert _summary(load_inventory(listed)) == _summary(ours)


@needs_ansible
def test_a_difference_with_ansible_is_found(tmp_path):
    """Negative control of the comparison: our reading altered after the fact must not compare equal."""
    ours = load_inventory(INVENTORIES / "fleet.example.yml")
    hosts = dict(ours.hosts)
    hosts["home-pc"] = hosts["home-pc"].model_copy(update={"ansible_port": 2223})
    altered = type(ours)(path=ours.path, hosts=hosts, origins=ours.origins)
    differences = compare_with_ansible(altered)
    assert differences[0] == "host 'home-pc': ansible_port is 2223, Ansible: 2222", differences
    # home-router's chain goes through home-pc: it differs too, and nothing else does.
    assert len(differences) == 2 and differences[1].startswith("host 'home-router': jump chain"), differences


# -- dcutr-lab inventory check --------------------------------------------------------------------------------


@pytest.fixture
def wide(monkeypatch):
    """A wide console: rich wraps at 80 columns when output is not a terminal."""
    from harness.console import console, err_console

    monkeypatch.setattr(console, "_width", 200)
    monkeypatch.setattr(err_console, "_width", 400)


def test_check_shows_values_and_origins(tmp_path, capsys, wide):
    path = render_local(tmp_path)
    assert main(["inventory", "check", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    home = shown["hosts"]["home-pc"]
    assert home["dcutr_role"]["value"] == "server" and home["dcutr_role"]["from"] == "group server"
    assert home["ansible_port"] == {"value": 2222, "from": "group nat", "file": str(path), "line": 30}
    assert home["jump_chain"] == ["nat-jump"]
    assert shown["hosts"]["home-router"]["jump_chain"] == ["nat-jump", "home-pc"]
    assert shown["hosts"]["nat-jump"]["derived_from"] == "the ssh options of group nat"
    assert main(["inventory", "check", str(path)]) == 0
    table = capsys.readouterr().out
    assert "nat-jump → home-pc → home-router" in table and "group nat" in table


def test_check_of_a_bad_inventory_is_one_line_and_exit_2(tmp_path, capsys, wide):
    path = write(tmp_path, NESTED.replace("ansible_port: 2202", "ansible_port: twothousand"))
    assert main(["inventory", "check", str(path)]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert "inventory.yml:18: all.children.private.children.server.vars.ansible_port: host 's1'" in lines[0]
    assert captured.out == ""


@needs_ansible
def test_check_with_ansible_says_they_agree(tmp_path, capsys):
    assert main(["inventory", "check", str(INVENTORIES / "fleet.example.ini"), "--ansible"]) == 0
    assert "reads it the same" in capsys.readouterr().out


@needs_ansible
def test_what_only_ansible_reads_is_read_through_it(tmp_path):
    """An inventory directory (hosts plus group_vars/) is Ansible's to read: through ansible-inventory, to the same
    hosts as the one-file version of it."""
    directory = tmp_path / "inventory"
    (directory / "group_vars").mkdir(parents=True)
    text = (INVENTORIES / "fleet.example.yml").read_text()
    (directory / "hosts.yml").write_text(text.replace("    ansible_user: dcutr\n", "", 1))
    (directory / "group_vars" / "all.yml").write_text("ansible_user: dcutr\n")
    inventory = load_inventory(directory)
    assert inventory.format == "ansible-inventory"
    assert _summary(inventory) == _summary(load_inventory(INVENTORIES / "fleet.example.yml"))
    # Without group_vars/all.yml Ansible gives no user: the directory really was read through Ansible.
    (directory / "group_vars" / "all.yml").unlink()
    assert load_inventory(directory).hosts["home-pc"].ansible_user is None


def test_group_vars_beside_a_file_are_never_silently_ignored(tmp_path, monkeypatch):
    path = write(tmp_path, NESTED)
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "server.yml").write_text("ansible_port: 2999\n")
    if shutil.which("ansible-inventory"):
        assert load_inventory(path).hosts["s1"].ansible_port == 2999  # read, through Ansible
    monkeypatch.setattr("harness.backends.ssh.ansible_parser.ansible_inventory", lambda: None)
    message = error_of(path)
    assert "group_vars/ beside it: only Ansible reads those" in message
