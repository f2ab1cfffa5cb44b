"""NAT rulesets: golden files, kernel check mode (`nft -c`, as root) and the properties each profile promises.

Regenerate the golden files after a deliberate change with `DCUTR_LAB_UPDATE_GOLDEN=1 pytest tests/test_nat_render.py`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from harness.errors import BadInput
from harness.nat.profiles import HOP_PRESETS, PRESETS, Filtering, Mapping, NatConfig, get_profile
from harness.nat.render import nft_check, render_ruleset, template_name

GOLDEN = Path(__file__).parent / "nat_golden"
ADDRESSES = {"wan_if": "eth0", "wan_ip": "198.18.0.10", "lan_if": "lan0", "lan_subnet": "192.168.1.0/24"}
RENDERABLE = [cfg.name for cfg in [*PRESETS.values(), *HOP_PRESETS.values()] if not cfg.chain]
CAN_NFT_CHECK = shutil.which("nft") is not None and os.geteuid() == 0


def render(name: str, **overrides: str) -> str:
    return render_ruleset(get_profile(name), **{**ADDRESSES, **overrides})


@pytest.mark.parametrize("name", RENDERABLE)
def test_ruleset_matches_golden_file(name: str) -> None:
    text = render(name)
    path = GOLDEN / f"{name}.nft"
    if os.environ.get("DCUTR_LAB_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with DCUTR_LAB_UPDATE_GOLDEN=1"
    assert text == path.read_text()


@pytest.mark.skipif(not CAN_NFT_CHECK, reason="nft -c needs nft and root")
@pytest.mark.parametrize("name", RENDERABLE)
def test_kernel_accepts_ruleset(name: str) -> None:
    ok, message = nft_check(render(name))
    assert ok, message


@pytest.mark.parametrize("name", RENDERABLE)
def test_ruleset_is_complete_and_uses_the_given_names(name: str) -> None:
    text = render(name, wan_if="wan7", wan_ip="198.19.4.20", lan_if="lanx", lan_subnet="10.9.8.0/24")
    assert text.startswith("flush ruleset\n")
    assert "{{" not in text and "{%" not in text
    assert '"wan7"' in text and '"lanx"' in text
    assert '"eth0"' not in text and '"lan0"' not in text and "br-lan" not in text
    assert "\n\n\n" not in text


def test_every_renderable_profile_has_its_own_template() -> None:
    for name in RENDERABLE:
        assert template_name(get_profile(name)) == f"{name}.nft.j2"


def test_drop_profiles_never_reset_and_openwrt_does() -> None:
    for name in ("full-cone", "restricted-cone", "port-restricted", "symmetric", "cgnat-carrier"):
        assert "reject" not in render(name), name
        assert "policy drop" in render(name)
    for name in ("openwrt-fw4", "openwrt-fw4-fullcone"):
        text = render(name)
        assert "meta l4proto tcp reject with tcp reset" in text
        assert 'iifname "eth0" jump input_wan' in text
        assert "jump reject_from_wan" in text


def test_mapping_statements() -> None:
    assert 'oifname "eth0" masquerade random,fully-random' in render("symmetric")
    for name in ("full-cone", "restricted-cone", "port-restricted", "cgnat-carrier"):
        assert 'oifname "eth0" masquerade\n' in render(name), name
    for name in ("openwrt-fw4", "openwrt-fw4-fullcone"):
        assert "meta nfproto ipv4 masquerade" in render(name)
    # the stock kernel has no nft_fullcone: the expression must never be emitted
    assert "fullcone comment" not in render("openwrt-fw4-fullcone")
    assert "masquerade" not in render("none").replace("# routed", "")


def test_cone_filtering_maps() -> None:
    full = render("full-cone")
    assert "dnat ip to meta l4proto . th dport map @cone" in full
    assert "update @cone { meta l4proto . ct reply proto-dst : ct original ip saddr . ct original proto-src }" in full
    restricted = render("restricted-cone")
    assert "dnat ip to ip saddr . meta l4proto . th dport map @cone" in restricted
    assert "update @cone { ip daddr . meta l4proto" in restricted
    for name in ("port-restricted", "symmetric", "openwrt-fw4"):
        assert "dnat" not in render(name).replace("ct status dnat", ""), name


def test_hairpin_only_where_promised() -> None:
    assert 'iifname "lan0" ip daddr 198.18.0.10' in render("full-cone")
    assert "snat ip to 198.18.0.10" in render("full-cone")
    for name in ("restricted-cone", "port-restricted", "symmetric"):
        assert "snat ip to" not in render(name)


def test_a_chain_is_rendered_hop_by_hop() -> None:
    with pytest.raises(BadInput, match="render each hop"):
        render("cgnat")


def test_custom_config_uses_the_template_of_its_properties() -> None:
    custom = NatConfig(
        name="my-home-router",
        mapping=Mapping.endpoint_independent,
        filtering=Filtering.address_dependent,
        mapping_timeout_s=30,
    )
    assert template_name(custom) == "restricted-cone.nft.j2"
    assert "timeout 30s" in render_ruleset(custom, **ADDRESSES)


@pytest.mark.parametrize(
    "overrides",
    [
        {"wan_if": "eth 0"},
        {"lan_if": "a-very-long-interface-name"},
        {"lan_if": "eth0"},
        {"wan_ip": "198.18.0.300"},
        {"wan_ip": "192.168.1.7"},
        {"lan_subnet": "lan"},
    ],
)
def test_bad_addresses_are_bad_input(overrides: dict[str, str]) -> None:
    with pytest.raises(BadInput):
        render("port-restricted", **overrides)


def test_rendering_keeps_no_state_between_calls() -> None:
    """One router's addresses never leak into the next ruleset, and the shared preset is left as it was."""
    first = render("full-cone")
    before = get_profile("full-cone").model_dump()
    other = render("full-cone", wan_if="wan3", wan_ip="198.19.2.2", lan_if="lan3", lan_subnet="10.3.0.0/24")
    assert "198.19.2.2" in other and "198.18.0.10" not in other
    render("restricted-cone", wan_ip="198.19.3.3")
    assert render("full-cone") == first
    assert get_profile("full-cone").model_dump() == before
