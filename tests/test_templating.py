from __future__ import annotations

import pytest

from harness.templating import TemplateError, referenced_paths, render


def test_referenced_paths_are_outermost_chains():
    template = "/ip4/{{ relay.public_ip }}/p2p/{{ relay.peer_id }} {{ client.dcutr_direct.connection_id }}"
    paths = referenced_paths(template)
    assert paths == {("relay", "public_ip"), ("relay", "peer_id"), ("client", "dcutr_direct", "connection_id")}


def test_render_nested_and_strict():
    namespace = {"relay": {"peer_id": "12D3KooWx", "public_ip": "<RELAY_IP>"}, "client": {"dcutr_direct": {"id": 4}}}
    assert render("/ip4/{{ relay.public_ip }}/p2p/{{ relay.peer_id }}", namespace) == "/ip4/<RELAY_IP>/p2p/12D3KooWx"
    assert render("{{ client.dcutr_direct.id }}", namespace) == "4"
    with pytest.raises(TemplateError, match="no attribute 'peer_id'"):
        render("{{ client.peer_id }}", namespace)


def test_plain_strings_pass_through():
    assert render("no template here", {}) == "no template here"


def test_syntax_error_is_a_template_error():
    with pytest.raises(TemplateError):
        referenced_paths("{{ relay.peer_id ")
