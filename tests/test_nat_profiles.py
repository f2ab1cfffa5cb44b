"""NAT profiles: presets, names, configs and the router sysctls (no Docker)."""

from __future__ import annotations

import pydantic
import pytest

from harness.errors import BadInput
from harness.nat.profiles import (
    HOP_PRESETS,
    PRESETS,
    ROUTER_SYSCTLS,
    Family,
    Filtering,
    Mapping,
    NatConfig,
    NatProfileName,
    Unsolicited,
    get_profile,
    profile_names,
)


def test_every_name_has_a_preset_named_after_it() -> None:
    assert set(PRESETS) == set(NatProfileName)
    for name, cfg in PRESETS.items():
        assert cfg.name == name.value


def test_unknown_profile_is_bad_input_naming_the_known_ones() -> None:
    with pytest.raises(BadInput) as caught:
        get_profile("fullcone")
    message = str(caught.value)
    assert "'fullcone'" in message
    for name in profile_names():
        assert name in message
    assert caught.value.exit_code == 2


def test_hop_profiles_resolve_but_are_not_offered_to_runbooks() -> None:
    assert get_profile("cgnat-carrier") is HOP_PRESETS["cgnat-carrier"]
    assert "cgnat-carrier" not in profile_names()


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("none", "routed"),
        ("full-cone", "EIM/EIF"),
        ("restricted-cone", "EIM/ADF"),
        ("port-restricted", "EIM/APDF"),
        ("symmetric", "APDM/APDF"),
        ("openwrt-fw4", "EIM/APDF"),
        ("openwrt-fw4-fullcone", "EIM/APDF"),
        ("cgnat", "EIM/APDF"),
    ],
)
def test_rfc4787_labels(name: str, label: str) -> None:
    assert get_profile(name).label == label


def test_only_openwrt_resets_unsolicited_inbound() -> None:
    for name in profile_names():
        cfg = get_profile(name)
        expected = Unsolicited.reject_rst if cfg.family is Family.openwrt_fw4 else Unsolicited.drop
        assert cfg.effective_unsolicited() is expected, name


def test_symmetric_randomises_ports_and_the_rest_preserve_them() -> None:
    """What `port_preservation` says is what the ruleset does: only a non-preserving hop masquerades randomly."""
    from harness.nat.render import render_ruleset

    addresses = {"wan_if": "eth0", "wan_ip": "198.18.0.10", "lan_if": "lan0", "lan_subnet": "192.168.1.0/24"}
    for name in profile_names():
        cfg = get_profile(name)
        assert cfg.port_preservation is (name != "symmetric"), name
        for hop in cfg.hops():
            assert ("fully-random" in render_ruleset(hop, **addresses)) is (not hop.port_preservation), hop.name


def test_cgnat_is_a_home_nat_behind_a_carrier_nat() -> None:
    cfg = get_profile("cgnat")
    assert cfg.chain == ("port-restricted", "cgnat-carrier")
    home, carrier = cfg.hops()
    assert home.name == "port-restricted"
    assert carrier.lan_pool == "100.64.0.0/10"
    assert cfg.effective() == (Mapping.endpoint_independent, Filtering.address_and_port_dependent)
    assert cfg.is_nat


@pytest.mark.parametrize(
    ("chain", "label", "unsolicited"),
    [
        (("full-cone", "symmetric"), "APDM/APDF", Unsolicited.drop),
        (("full-cone", "restricted-cone"), "EIM/ADF", Unsolicited.drop),
        (("openwrt-fw4", "port-restricted"), "EIM/APDF", Unsolicited.drop),
        (("port-restricted", "openwrt-fw4"), "EIM/APDF", Unsolicited.reject_rst),
    ],
)
def test_a_chain_is_as_strict_as_its_strictest_hop_and_meets_strangers_at_its_outermost(
    chain: tuple[str, ...], label: str, unsolicited: Unsolicited
) -> None:
    cfg = NatConfig(name="custom-chain", mapping=None, filtering=None, chain=chain)
    assert cfg.is_nat and [hop.name for hop in cfg.hops()] == list(chain)
    assert cfg.label == label
    assert cfg.effective_unsolicited() is unsolicited


def test_rfc4787_abbreviations() -> None:
    assert [m.short for m in Mapping] == ["EIM", "ADM", "APDM"]
    assert [f.short for f in Filtering] == ["EIF", "ADF", "APDF"]
    assert NatConfig(name="routed", mapping=None, filtering=None).label == "routed"


@pytest.mark.parametrize(
    ("mapping", "filtering", "hairpin"),
    [
        (Mapping.address_and_port_dependent, Filtering.endpoint_independent, False),
        (Mapping.address_dependent, Filtering.address_dependent, False),
        (Mapping.address_and_port_dependent, Filtering.address_and_port_dependent, True),
        (Mapping.endpoint_independent, None, False),
    ],
)
def test_combinations_without_a_ruleset_are_refused(mapping, filtering, hairpin) -> None:
    with pytest.raises(pydantic.ValidationError):
        NatConfig(name="x", mapping=mapping, filtering=filtering, hairpin=hairpin)


def test_router_sysctls_are_ones_docker_accepts_for_a_container() -> None:
    # Docker accepts only namespaced sysctls for a container (net.*), as strings; that the routers' kernels
    # really run with them is checked on Docker (e2e/test_lab.py).
    assert all(key.startswith("net.") for key in ROUTER_SYSCTLS)
    assert all(isinstance(value, str) for value in ROUTER_SYSCTLS.values())
