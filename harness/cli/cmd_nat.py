"""`dcutr-lab nat list|show|probe`: the NAT profiles, their rulesets, and their conformance from the outside."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Column, Table

from harness.cli import app
from harness.console import console, err_console

nat_app = typer.Typer(name="nat", help="NAT profiles: list, show rulesets, probe them.", no_args_is_help=True)
app.add_typer(nat_app)


@nat_app.command("list")
def list_profiles() -> None:
    """The profiles runbooks may name, with their RFC 4787 properties."""
    from harness.nat.profiles import PRESETS

    table = Table(
        Column("profile", no_wrap=True),
        Column("RFC 4787", no_wrap=True),
        Column("ports", no_wrap=True),
        Column("unsolicited", no_wrap=True),
        Column("hairpin", no_wrap=True),
        Column("TCP hole punching", ratio=1),
    )
    for cfg in PRESETS.values():
        hops = cfg.hops()
        label = f"{cfg.label} x{len(cfg.chain)}" if cfg.chain else cfg.label
        table.add_row(
            cfg.name,
            label,
            ("kept" if all(h.port_preservation for h in hops) else "random") if hops else "-",
            cfg.effective_unsolicited().value if hops else "-",
            ("yes" if all(h.hairpin for h in hops) else "no") if hops else "-",
            cfg.hole_punch,
        )
    console.print(table)


@nat_app.command("show")
def show(
    profile: str = typer.Argument(..., help="A profile name (or a chain hop such as cgnat-carrier)."),
    wan_if: str = typer.Option("eth0", help="WAN interface."),
    wan_ip: str = typer.Option("198.18.0.10", help="WAN address."),
    lan_if: str = typer.Option("lan0", help="LAN interface."),
    lan_subnet: str = typer.Option("192.168.1.0/24", help="LAN subnet."),
    check: bool = typer.Option(False, "--check", help="Also validate it with `nft -c` (needs root)."),
) -> None:
    """Print the nftables ruleset a router of this profile applies."""
    from harness.errors import LabError
    from harness.nat.profiles import get_profile
    from harness.nat.render import nft_check, render_ruleset

    cfg = get_profile(profile)
    hops = cfg.chain or (profile,)
    for hop in hops:
        ruleset = render_ruleset(get_profile(hop), wan_if=wan_if, wan_ip=wan_ip, lan_if=lan_if, lan_subnet=lan_subnet)
        if len(hops) > 1:
            console.print(f"[step]# hop {hop}[/]")
        console.print(ruleset, markup=False, highlight=False, end="")
        if check:
            ok, message = nft_check(ruleset)
            if not ok:
                raise LabError(f"nft -c rejected the {hop} ruleset: {message}")
            console.print(f"[ok]# nft -c: {hop} ruleset is valid[/]")


@nat_app.command("probe")
def probe(
    profiles: Annotated[list[str] | None, typer.Argument(help="Profiles to probe (default: all).")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the results as JSON here ('-': stdout).")
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Include the prober's raw observations in the JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds an observer's connection attempt may take.")] = 1.5,
) -> None:
    """Classify each profile from the outside (mapping, filtering, hairpin); exit 1 if one does not conform."""
    from harness.backends.docker import DockerLab
    from harness.nat.probe import mismatch_lines, probe_profiles, results_json, results_table
    from harness.nat.profiles import get_profile, profile_names

    names = profiles or list(profile_names())
    for name in names:
        get_profile(name)  # BadInput before any container exists
    to_stdout = json_out is not None and str(json_out) == "-"
    out = err_console if to_stdout else console  # `--json -` keeps stdout for the JSON alone
    with DockerLab() as lab:
        out.print(f"[muted]lab {lab.run_id}: probing {', '.join(names)}[/]")
        results = probe_profiles(names, lab=lab, timeout=timeout, progress=lambda m: out.print(f"  [muted]{m}[/]"))
    out.print(results_table(results))
    for line in mismatch_lines(results):
        out.print(f"  [error]mismatch[/] {line}")
    if json_out is not None:
        text = results_json(results, include_raw=raw)
        if to_stdout:
            print(text)
        else:
            json_out.write_text(text + "\n")
            out.print(f"[muted]results: {json_out}[/]")
    failing = [r.profile for r in results if not r.matches_profile]
    if failing:
        out.print(f"[error]not as their names say:[/] {', '.join(failing)}")
        raise typer.Exit(1)
    out.print(f"[ok]all {len(results)} profile(s) conform[/]")


@nat_app.command("punch")
def punch(
    profiles: Annotated[list[str] | None, typer.Argument(help="Profiles to pair up (default: all).")] = None,
    trials: Annotated[int, typer.Option(help="Punches per pair.")] = 1,
    attempts: Annotated[int, typer.Option(help="Dials per punch before giving up (DCUtR makes 3).")] = 3,
    skew: Annotated[float, typer.Option(help="Seconds side b dials after side a (negative: a after b).")] = 0.0,
    delay_ms: Annotated[
        float | None,
        typer.Option(
            "--delay-ms",
            min=0,
            help="One-way delay of each router's WAN link, ms (default: the runs' own, $DCUTR_LAB_WAN_DELAY_MS "
            "or 20; 0: routers straight on transit).",
        ),
    ] = None,
    loss: Annotated[
        float, typer.Option("--loss", min=0, max=99.9, help="Percent of frames each WAN link drops, each way.")
    ] = 0.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
) -> None:
    """TCP hole punching between every pair of the profiles, without libp2p; exit 1 on an unexpected outcome."""
    import json

    from harness.backends.docker import DockerLab, default_wan_delay_ms
    from harness.nat.profiles import get_profile, profile_names
    from harness.nat.punch import pairs_of, punch_pairs, punch_table

    names = profiles or list(profile_names())
    for name in names:
        get_profile(name)
    pairs = pairs_of(names)
    delay = default_wan_delay_ms() if delay_ms is None else delay_ms
    with DockerLab() as lab:
        link = f"WAN delay {delay:g} ms" + (f", loss {loss:g}%" if loss else "")
        console.print(f"[muted]lab {lab.run_id}: {len(pairs)} pair(s) x {trials} trial(s), {link}[/]")
        results = punch_pairs(
            pairs,
            lab=lab,
            trials=trials,
            attempts=attempts,
            skew=skew,
            wan_delay_ms=delay,
            wan_loss=loss,
            progress=lambda m: console.print(f"  [muted]{m}[/]"),
        )
    console.print(punch_table(results))
    if json_out is not None:
        json_out.write_text(json.dumps([r.model_dump(mode="json") for r in results], indent=2) + "\n")
        console.print(f"[muted]results: {json_out}[/]")
    if not all(r.as_expected for r in results):
        raise typer.Exit(1)
