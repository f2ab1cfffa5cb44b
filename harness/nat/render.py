"""NAT config -> nftables ruleset: a pure function over the templates in harness/nat/rulesets/.

The result starts with `flush ruleset` and is applied whole (`nft -f`), so a router never runs half a profile.
One template per profile, named after it (`port-restricted.nft.j2`); a config that is not a preset gets the
template of the preset with the same RFC 4787 properties.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import jinja2

from harness.errors import BadInput
from harness.nat.profiles import Family, Filtering, Mapping, NatConfig, Unsolicited

RULESETS_DIR = Path(__file__).resolve().parent / "rulesets"
_IFNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")

# A custom linux config renders with the template of the preset that has its RFC 4787 properties.
_LINUX_TEMPLATES: dict[tuple[Mapping, Filtering], str] = {
    (Mapping.endpoint_independent, Filtering.endpoint_independent): "full-cone",
    (Mapping.endpoint_independent, Filtering.address_dependent): "restricted-cone",
    (Mapping.endpoint_independent, Filtering.address_and_port_dependent): "port-restricted",
    (Mapping.address_and_port_dependent, Filtering.address_and_port_dependent): "symmetric",
}


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(RULESETS_DIR)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=False,
        keep_trailing_newline=True,
        autoescape=False,
    )


def template_name(cfg: NatConfig) -> str:
    """The ruleset template of a config: its own file when there is one, else the one of its properties."""
    if cfg.chain:
        raise BadInput(
            f"NAT profile {cfg.name!r} is {len(cfg.chain)} routers in series ({', '.join(cfg.chain)}): "
            "render each hop's profile on its own router"
        )
    own = f"{cfg.name}.nft.j2"
    if (RULESETS_DIR / own).is_file():
        return own
    if cfg.family is Family.routed or cfg.mapping is None or cfg.filtering is None:
        return "none.nft.j2"
    if cfg.family is Family.openwrt_fw4:
        return "openwrt-fw4-fullcone.nft.j2" if cfg.fullcone else "openwrt-fw4.nft.j2"
    if not cfg.port_preservation and cfg.mapping is Mapping.endpoint_independent:
        raise BadInput(f"NAT profile {cfg.name!r}: no ruleset for EIM without port preservation")
    try:
        return f"{_LINUX_TEMPLATES[cfg.mapping, cfg.filtering]}.nft.j2"
    except KeyError:
        raise BadInput(f"NAT profile {cfg.name!r}: no ruleset for {cfg.mapping.short}/{cfg.filtering.short}") from None


def summary(cfg: NatConfig) -> str:
    """One line for the ruleset's header: `EIM/APDF, port-preserving, unsolicited inbound dropped`."""
    if cfg.mapping is None:
        return "routed, no NAT"
    parts = [cfg.label, "port-preserving" if cfg.port_preservation else "random ports"]
    parts.append("unsolicited inbound " + ("dropped" if cfg.unsolicited is Unsolicited.drop else "reset (TCP RST)"))
    if cfg.hairpin:
        parts.append("hairpinning")
    return ", ".join(parts)


def _check_inputs(wan_if: str, wan_ip: str, lan_if: str, lan_subnet: str) -> tuple[str, str]:
    for what, name in (("wan_if", wan_if), ("lan_if", lan_if)):
        if not _IFNAME.match(name):
            raise BadInput(f"{what} {name!r} is not an interface name")
    if wan_if == lan_if:
        raise BadInput(f"wan_if and lan_if are both {wan_if!r}")
    try:
        wan = ipaddress.IPv4Address(wan_ip)
    except ValueError:
        raise BadInput(f"wan_ip {wan_ip!r} is not an IPv4 address") from None
    try:
        lan = ipaddress.IPv4Network(lan_subnet, strict=False)
    except ValueError:
        raise BadInput(f"lan_subnet {lan_subnet!r} is not an IPv4 network") from None
    if wan in lan:
        raise BadInput(f"wan_ip {wan_ip} lies inside lan_subnet {lan}")
    return str(wan), str(lan)


def render_ruleset(cfg: NatConfig, *, wan_if: str, wan_ip: str, lan_if: str, lan_subnet: str) -> str:
    """The complete nftables ruleset of one router (starts with `flush ruleset`). Pure: no I/O but templates."""
    wan_ip, lan_subnet = _check_inputs(wan_if, wan_ip, lan_if, lan_subnet)
    template = _environment().get_template(template_name(cfg))
    text = template.render(
        cfg=cfg, summary=summary(cfg), wan_if=wan_if, wan_ip=wan_ip, lan_if=lan_if, lan_subnet=lan_subnet
    )
    # Blank-line runs left by empty blocks make diffs noisy: collapse them.
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.rstrip("\n") + "\n"


def nft_check(ruleset: str, *, nft: str | None = None, timeout: float = 20.0) -> tuple[bool, str]:
    """`nft -c -f -` (check mode: parsed and validated by the kernel, nothing applied). (ok, message)."""
    binary = nft or shutil.which("nft")
    if binary is None:
        return False, "nft is not installed"
    result = subprocess.run(
        [binary, "-c", "-f", "-"], input=ruleset, capture_output=True, text=True, timeout=timeout, check=False
    )
    return result.returncode == 0, (result.stderr or result.stdout).strip()
