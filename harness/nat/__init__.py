"""NAT profiles (RFC 4787 named router behaviours), their nftables rulesets and the conformance probe.

`render_ruleset(get_profile("port-restricted"), wan_if="eth0", wan_ip="198.18.0.10", lan_if="lan0",
lan_subnet="192.168.1.0/24")` is the ruleset a router applies with `nft -f`, with `ROUTER_SYSCTLS` set.
"""

from harness.nat.profiles import (
    HOP_PRESETS,
    PRESETS,
    ROUTER_SYSCTLS,
    Filtering,
    Mapping,
    NatConfig,
    NatProfileName,
    Unsolicited,
    get_profile,
    profile_names,
)
from harness.nat.render import render_ruleset

__all__ = [
    "HOP_PRESETS",
    "PRESETS",
    "ROUTER_SYSCTLS",
    "Filtering",
    "Mapping",
    "NatConfig",
    "NatProfileName",
    "Unsolicited",
    "get_profile",
    "profile_names",
    "render_ruleset",
]
