"""Every NAT profile, probed from the outside on Docker, behaves as its name says (RFC 4787 mapping, filtering,
unsolicited inbound, hairpinning). Needs a Docker daemon and root (the lab makes veth pairs): without them
the fixtures fail with a one-line SetupError rather than skipping, so a broken CI machine cannot pass."""

from __future__ import annotations

import pytest

from harness.nat.profiles import profile_names

pytestmark = [
    pytest.mark.docker,
    pytest.mark.nat_conformance,
]


@pytest.fixture(scope="module")
def probe_results():
    from harness.backends.docker import DockerLab, sweep
    from harness.images import ensure_image
    from harness.nat.probe import probe_profiles

    images = {kind: ensure_image(kind) for kind in ("base", "router")}
    with DockerLab(images=images.__getitem__) as lab:
        results = {r.profile: r for r in probe_profiles(profile_names(), lab=lab)}
    assert sweep(lab.client, run_id=lab.run_id) == (0, 0), "the probe lab left containers or networks behind"
    return results


@pytest.mark.parametrize("profile", profile_names())
def test_profile_behaves_as_its_name_says(probe_results, profile: str) -> None:
    result = probe_results[profile]
    assert result.matches_profile, f"{profile}: " + "; ".join(result.mismatches)


def test_openwrt_routers_reset_and_the_others_stay_silent(probe_results) -> None:
    for name, result in probe_results.items():
        if result.translated:
            expected = "reject-rst" if name.startswith("openwrt") else "drop"
            assert result.unmapped is not None and result.unmapped.value == expected, name
