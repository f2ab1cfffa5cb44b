from __future__ import annotations

from harness.conntrack import parse_endpoint, parse_flows

LINE = (
    "tcp      6 431999 ESTABLISHED src=192.168.1.2 dst=198.18.0.4 sport=4012 dport=4013 "
    "src=198.18.0.4 dst=198.18.0.3 sport=4013 dport=4012 [ASSURED] mark=0 use=1"
)


def test_parse_a_flow_and_skip_the_summary():
    flows = parse_flows(LINE + "\nconntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.\n")
    assert len(flows) == 1
    flow = flows[0]
    assert flow.state == "ESTABLISHED" and flow.assured and flow.protocol == "tcp"
    assert flow.original == ("192.168.1.2", "198.18.0.4", 4012, 4013)
    assert flow.reply == ("198.18.0.4", "198.18.0.3", 4013, 4012)


def test_parse_endpoint_forms():
    assert parse_endpoint("/ip4/<CLIENT_NAT_IP>/tcp/4013/p2p/12D3KooWx") == ("<CLIENT_NAT_IP>", 4013)
    assert parse_endpoint("198.18.0.3:4012") == ("198.18.0.3", 4012)
    assert parse_endpoint("[2001:db8::1]:4012") == ("2001:db8::1", 4012)
    assert parse_endpoint("<SERVER_NAT_IP>") == ("<SERVER_NAT_IP>", None)


def test_event_lines_of_conntrack_dash_e_parse_like_table_lines():
    from harness.conntrack import parse_flows

    text = (
        "# conntrack -E -p tcp (events during the run)\n"
        "[1764054000.123456]\t [NEW] tcp      6 120 SYN_SENT src=192.168.1.2 dst=198.18.0.4 sport=4012 dport=4013"
        " [UNREPLIED] src=198.18.0.4 dst=198.18.0.3 sport=4013 dport=4012\n"
        "[1764054000.125000]\t [UPDATE] tcp      6 432000 ESTABLISHED src=192.168.1.2 dst=198.18.0.4 sport=4012"
        " dport=4013 src=198.18.0.4 dst=198.18.0.3 sport=4013 dport=4012 [ASSURED]\n"
    )
    flows = parse_flows(text)
    assert [f.state for f in flows] == ["SYN_SENT", "ESTABLISHED"]
    assert [f.event for f in flows] == ["NEW", "UPDATE"] and flows[0].ts == 1764054000.123456
    assert flows[1].line == 3
    assert ("198.18.0.3", 4012) in flows[1].endpoints()
