"""NAT profiles: router behaviours named by their RFC 4787 properties, patchbay-style.

A profile name (`NatProfileName`) expands to a frozen `NatConfig` through `PRESETS`; `render_ruleset`
(harness.nat.render) turns a config into the nftables ruleset a router container applies whole.

RFC 4787 vocabulary used throughout:
- mapping (section 4.1): which external ip:port an inside endpoint gets for a new flow.
  EIM, endpoint-independent: the same for every destination. ADM, address-dependent: a new one per destination
  address. APDM, address-and-port-dependent: a new one per destination address and port ("symmetric").
- filtering (section 5): which outside endpoints may send to a mapping.
  EIF: anyone. ADF: only addresses the inside endpoint sent to. APDF: only the exact address and port.
- port preservation (4.1): the external port equals the inside port when free.
- hairpinning (6): an inside host reaches another inside host through its external address.
- unsolicited inbound: what a flow nothing maps meets: a silent drop, or a TCP reset (OpenWrt fw4's
  `handle_reject`). A reset ends a TCP simultaneous open that comes in before the inside SYN went out.
"""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.errors import BadInput


class NatProfileName(StrEnum):
    none = "none"
    full_cone = "full-cone"
    restricted_cone = "restricted-cone"
    port_restricted = "port-restricted"
    symmetric = "symmetric"
    openwrt_fw4 = "openwrt-fw4"
    openwrt_fw4_fullcone = "openwrt-fw4-fullcone"
    cgnat = "cgnat"


_DEPENDENCE = {"endpoint-independent": "EI", "address-dependent": "AD", "address-and-port-dependent": "APD"}


class _Dependence(StrEnum):
    """What an RFC 4787 behaviour depends on: the same three degrees name a mapping and a filtering."""

    @property
    def short(self) -> str:
        """The RFC's abbreviation: the degree's initials and the behaviour's (EIM, ADM, APDM; EIF, ADF, APDF)."""
        return _DEPENDENCE[self.value] + type(self).__name__[0]


class Mapping(_Dependence):
    endpoint_independent = "endpoint-independent"
    address_dependent = "address-dependent"
    address_and_port_dependent = "address-and-port-dependent"


class Filtering(_Dependence):
    endpoint_independent = "endpoint-independent"
    address_dependent = "address-dependent"
    address_and_port_dependent = "address-and-port-dependent"


class Unsolicited(StrEnum):
    drop = "drop"  # silently: the sender's SYN times out, a later simultaneous open still works
    reject_rst = "reject-rst"  # TCP reset (and ICMP port unreachable for the rest), as OpenWrt fw4 does


class Family(StrEnum):
    linux = "linux"  # a plain Linux router: nftables masquerade + conntrack, dynamic maps for the cones
    openwrt_fw4 = "openwrt-fw4"  # OpenWrt's firewall4 ruleset (zones lan/wan), from real router snapshots
    routed = "routed"  # no NAT at all: a public host


class NatConfig(BaseModel):
    """One router's behaviour, or (for `chain`) the routers in front of a node, innermost first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    mapping: Mapping | None = Field(description="None: no translation (routed)")
    filtering: Filtering | None = Field(description="None: no filtering beyond routing")
    port_preservation: bool = True
    unsolicited: Unsolicited = Unsolicited.drop
    hairpin: bool = False
    family: Family = Family.linux
    fullcone: bool = Field(False, description="openwrt-fw4: the zone's fullcone option (nft_fullcone)")
    mapping_timeout_s: int = Field(300, description="life of a learnt cone mapping without outbound traffic")
    chain: tuple[str, ...] = Field((), description="profile names of the routers in series, innermost first")
    lan_pool: str | None = Field(None, description="where this router's LAN addresses should come from")
    hole_punch: str = Field("", description="what TCP hole punching meets behind this profile, in one line")

    @model_validator(mode="after")
    def _consistent(self) -> NatConfig:
        if self.chain:
            return self
        if (self.mapping is None) != (self.filtering is None):
            raise ValueError("mapping and filtering are both set (a NAT) or both None (routed)")
        if self.mapping is not None and self.mapping is not Mapping.endpoint_independent:
            if self.filtering is not Filtering.address_and_port_dependent:
                # patchbay's rule too: inbound from an unsolicited port needs a cone map, which only EIM has.
                raise ValueError("a mapping other than EIM only comes with address-and-port-dependent filtering")
            if self.hairpin:
                raise ValueError("hairpinning needs endpoint-independent mapping (the cone map)")
        return self

    @property
    def is_nat(self) -> bool:
        return bool(self.chain) or self.mapping is not None

    @property
    def label(self) -> str:
        """`EIM/APDF` and the like; `routed` for no NAT."""
        mapping, filtering = self.effective()
        if mapping is None or filtering is None:
            return "routed"
        return f"{mapping.short}/{filtering.short}"

    def hops(self) -> tuple[NatConfig, ...]:
        """The configs of the routers in front of a node, innermost first (one for a plain profile)."""
        if self.chain:
            return tuple(get_profile(hop) for hop in self.chain)
        return (self,) if self.is_nat else ()

    def effective(self) -> tuple[Mapping | None, Filtering | None]:
        """What the outside sees through every hop: the least permissive mapping and filtering of the chain."""
        order_m = list(Mapping)
        order_f = list(Filtering)
        mapping: Mapping | None = None
        filtering: Filtering | None = None
        for hop in self.hops():
            if hop.mapping is not None:
                mapping = hop.mapping if mapping is None else max(mapping, hop.mapping, key=order_m.index)
            if hop.filtering is not None:
                filtering = hop.filtering if filtering is None else max(filtering, hop.filtering, key=order_f.index)
        return mapping, filtering

    def effective_unsolicited(self) -> Unsolicited:
        """The outermost hop meets unsolicited traffic first."""
        hops = self.hops()
        return hops[-1].unsolicited if hops else Unsolicited.drop


_EIM, _ADM, _APDM = Mapping
_EIF, _ADF, _APDF = Filtering

PRESETS: MappingProxyType[NatProfileName, NatConfig] = MappingProxyType(
    {
        NatProfileName.none: NatConfig(
            name="none",
            description="No NAT: the node has a public (transit) address and no router in front of it.",
            mapping=None,
            filtering=None,
            family=Family.routed,
            hole_punch="nothing to punch: the other side dials in directly",
        ),
        NatProfileName.full_cone: NatConfig(
            name="full-cone",
            description=(
                "RFC 3489 full cone. RFC 4787: endpoint-independent mapping, endpoint-independent filtering. "
                "Once an inside endpoint sent anything, anyone reaches it on its mapping. The behaviour of "
                "netfilter-full-cone-nat style modules for UDP and of routers with UPnP-like openness."
            ),
            mapping=_EIM,
            filtering=_EIF,
            hairpin=True,
            hole_punch="works even when one side's SYN is late: the mapping accepts any sender",
        ),
        NatProfileName.restricted_cone: NatConfig(
            name="restricted-cone",
            description=(
                "RFC 3489 restricted cone. RFC 4787: endpoint-independent mapping, address-dependent filtering. "
                "Only addresses the inside endpoint sent to may reach its mapping, from any of their ports."
            ),
            mapping=_EIM,
            filtering=_ADF,
            hole_punch="works: each side's SYN opens the mapping to the other side's address",
        ),
        NatProfileName.port_restricted: NatConfig(
            name="port-restricted",
            description=(
                "RFC 3489 port-restricted cone. RFC 4787: endpoint-independent mapping (port-preserving "
                "masquerade), address-and-port-dependent filtering (conntrack only). Linux masquerade, most "
                "home routers and RFC 6888 carrier NATs behave so."
            ),
            mapping=_EIM,
            filtering=_APDF,
            hole_punch="works with simultaneous open: an early SYN is dropped silently and the retry gets in",
        ),
        NatProfileName.symmetric: NatConfig(
            name="symmetric",
            description=(
                "RFC 3489 symmetric. RFC 4787: address-and-port-dependent mapping with random ports "
                "(masquerade random,fully-random), address-and-port-dependent filtering. Enterprise firewalls "
                "and cloud NAT gateways."
            ),
            mapping=_APDM,
            filtering=_APDF,
            port_preservation=False,
            hole_punch="fails: the port the relay observed is not the port a direct SYN leaves from",
        ),
        NatProfileName.openwrt_fw4: NatConfig(
            name="openwrt-fw4",
            description=(
                "OpenWrt firewall4 as on the Kaspa DCUtR lab routers (OpenWrt SNAPSHOT r31958, nftables fw4): "
                "zones lan/wan, wan masq=1 mtu_fix=1, input/forward REJECT on wan through handle_reject "
                "(TCP reset). RFC 4787: EIM (port-preserving masquerade), APDF, unsolicited inbound answered "
                "with a TCP reset."
            ),
            mapping=_EIM,
            filtering=_APDF,
            unsolicited=Unsolicited.reject_rst,
            family=Family.openwrt_fw4,
            hole_punch="racy: a SYN arriving before the inside SYN went out is answered with a reset",
        ),
        NatProfileName.openwrt_fw4_fullcone: NatConfig(
            name="openwrt-fw4-fullcone",
            description=(
                "openwrt-fw4 with the wan zone's fullcone=1, exactly as the Kaspa lab's routers run it: "
                "`meta nfproto ipv4 fullcone` in srcnat_wan and nothing in dstnat_wan. nft_fullcone handles "
                "UDP only and is plain masquerade for TCP, and without a dstnat rule it restores no inbound "
                "flow at all: for TCP this router is EIM/APDF with resets, like openwrt-fw4."
            ),
            mapping=_EIM,
            filtering=_APDF,
            unsolicited=Unsolicited.reject_rst,
            family=Family.openwrt_fw4,
            fullcone=True,
            hole_punch="as openwrt-fw4: fullcone changes nothing for TCP",
        ),
        NatProfileName.cgnat: NatConfig(
            name="cgnat",
            description=(
                "A home NAT (port-restricted) behind a carrier-grade NAT whose inside is RFC 6598 shared "
                "address space (100.64.0.0/10): two routers in series. RFC 6888 asks carriers for EIM; "
                "both hops are port-preserving masquerade, so the node is EIM/APDF from the outside."
            ),
            mapping=None,
            filtering=None,
            chain=("port-restricted", "cgnat-carrier"),
            hole_punch="works like port-restricted when both hops keep EIM",
        ),
    }
)

# Profiles that only exist as a hop of a chain: accepted by get_profile, not offered to runbooks.
HOP_PRESETS: MappingProxyType[str, NatConfig] = MappingProxyType(
    {
        "cgnat-carrier": NatConfig(
            name="cgnat-carrier",
            description=(
                "The carrier hop of `cgnat`: RFC 4787 EIM (port-preserving masquerade), APDF, silent drops; "
                "its inside (the home routers' WANs) is RFC 6598 shared address space."
            ),
            mapping=_EIM,
            filtering=_APDF,
            lan_pool="100.64.0.0/10",
            hole_punch="works like port-restricted",
        ),
    }
)

# Sysctls of every router container (Docker `sysctls=` at create; all are per network namespace).
ROUTER_SYSCTLS: MappingProxyType[str, str] = MappingProxyType(
    {
        # forward between LAN and WAN
        "net.ipv4.ip_forward": "1",
        # no reverse-path filtering: the LAN is a veth the kernel did not see when the container started
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.default.rp_filter": "0",
        # a router that sends ICMP redirects would teach hosts a path around the NAT
        "net.ipv4.conf.all.send_redirects": "0",
        "net.ipv4.conf.default.send_redirects": "0",
        "net.ipv4.conf.all.accept_redirects": "0",
        "net.ipv4.conf.default.accept_redirects": "0",
        # conntrack picks up TCP flows only from their SYN: a stray mid-stream packet from outside is INVALID
        # (and dropped) instead of becoming an ESTABLISHED entry that the router's own stack answers with RST
        "net.netfilter.nf_conntrack_tcp_loose": "0",
        # the lab is IPv4: no v6 path around the NAT
        "net.ipv6.conf.all.disable_ipv6": "1",
        "net.ipv6.conf.default.disable_ipv6": "1",
    }
)


def profile_names() -> tuple[str, ...]:
    return tuple(name.value for name in PRESETS)


def get_profile(name: str) -> NatConfig:
    """The config of a preset (or of a chain hop such as `cgnat-carrier`); BadInput names the known ones."""
    try:
        return PRESETS[NatProfileName(name)]
    except ValueError:
        pass
    if name in HOP_PRESETS:
        return HOP_PRESETS[name]
    raise BadInput(f"unknown NAT profile {name!r} (known: {', '.join(profile_names())})")
