#!/bin/bash
# Punches through real Linux NAT without Docker: relay, server and client in network namespaces, each private
# peer behind its own nftables router. A developer check of the release binaries (root only, needs ip + nft);
# the lab proper runs the same binaries in containers.
#
#   sudo images/peers/scripts/netns-punch.sh            # every scenario
#   sudo images/peers/scripts/netns-punch.sh masquerade  # one scenario
#
# Scenarios (expected outcome in brackets):
#   masquerade      both routers masquerade (port-preserving, address+port-dependent filtering)  [direct]
#   forward-server  the server's router forwards its listen port (endpoint-independent filtering)  [direct]
#   forward-client  the client's router forwards its listen port                                    [direct]
#   symmetric       the client's router maps every flow to a random port                            [no direct]
#   rst-server      the server's router answers unsolicited SYNs with RST (breaks simultaneous open
#                   when the client's SYN arrives first)                                          [flaky]
#   no-dcutr        masquerade, both peers with DCUTR_ENABLED=false (the negative control)          [no direct]
#   relay-stop      masquerade, an 8 s session; the relay is stopped after the first pong:
#                   the direct session keeps pinging                                [direct, client exit 0]
#   relay-stop-relayed  no-dcutr with the relayed fallback, an 8 s session; the relay is stopped after the
#                   first pong: the session dies with it                  [relayed, session_lost, exit 3]
#   liar            masquerade, LAB_LIE_DIRECT=true on both peers (the lying-peer control): the logs say
#                   direct, the routers hold no flow between the two NATs       [logs: direct, flow: no]
# Every line also says whether the routers' conntrack tables hold a flow between the two NAT addresses
# (flow: yes|no, the lab's ground truth; tables kept as rs.conntrack / rc.conntrack next to the logs).
# Namespaces are named dlp-*; they are removed on exit.
set -euo pipefail

BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
OUT=${OUT:-$(mktemp -d /tmp/netns-punch.XXXXXX)}
P=dlp
NODES="t rs rc s c"
RELAY_PID=""
SERVER_PID=""
CLIENT_PID=""

ns() { ip netns exec "$P-$1" "${@:2}"; }
# Background peers are started with `ip netns exec` itself, not through ns(): a function runs in a forked
# subshell, so $! would be that shell and SIGTERM would never reach the peer.

stop_peers() {
    for pid in $CLIENT_PID $SERVER_PID $RELAY_PID; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $CLIENT_PID $SERVER_PID $RELAY_PID; do wait "$pid" 2>/dev/null || true; done
    CLIENT_PID=""
    SERVER_PID=""
    RELAY_PID=""
}

down() {
    stop_peers
    # Anything still running inside a namespace would keep it alive after `ip netns del` (unlisted).
    for n in $NODES; do
        local pids
        pids=$(ip netns pids "$P-$n" 2>/dev/null || true)
        [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
        ip netns del "$P-$n" 2>/dev/null || true
    done
}
trap down EXIT

# transit 198.18.0.0/24 (relay .10, server router .2, client router .3); LANs 192.168.1.0/24 and 192.168.2.0/24
up() {
    down
    for n in $NODES; do ip netns add "$P-$n"; ip -n "$P-$n" link set lo up; done
    ip -n "$P-t" link add br0 type bridge
    ip -n "$P-t" link set br0 up
    ip -n "$P-t" addr add 198.18.0.10/24 dev br0
    for r in rs:2 rc:3; do
        local n=${r%%:*} last=${r##*:}
        ip link add "$P-$n-w" type veth peer name "$P-$n-wt"
        ip link set "$P-$n-w" netns "$P-$n"
        ip link set "$P-$n-wt" netns "$P-t"
        ip -n "$P-t" link set "$P-$n-wt" master br0 up
        ip -n "$P-$n" link set "$P-$n-w" name wan
        ip -n "$P-$n" link set wan up
        ip -n "$P-$n" addr add "198.18.0.$last/24" dev wan
        ns "$n" sysctl -qw net.ipv4.ip_forward=1
    done
    for pair in s:rs:1 c:rc:2; do
        local peer router net
        IFS=: read -r peer router net <<<"$pair"
        ip link add "$P-$peer-l" type veth peer name "$P-$peer-lr"
        ip link set "$P-$peer-l" netns "$P-$peer"
        ip link set "$P-$peer-lr" netns "$P-$router"
        ip -n "$P-$peer" link set "$P-$peer-l" name eth0
        ip -n "$P-$peer" link set eth0 up
        ip -n "$P-$router" link set "$P-$peer-lr" name lan
        ip -n "$P-$router" link set lan up
        ip -n "$P-$peer" addr add "192.168.$net.2/24" dev eth0
        ip -n "$P-$router" addr add "192.168.$net.1/24" dev lan
        ip -n "$P-$peer" route add default via "192.168.$net.1"
    done
    for r in rs rc; do
        ns "$r" nft -f - <<'NFT'
table ip nat {
  chain prerouting { type nat hook prerouting priority dstnat; }
  chain postrouting { type nat hook postrouting priority srcnat; oifname "wan" masquerade; }
}
table ip filter {
  chain forward { type filter hook forward priority 0; policy drop;
    ct state established,related accept
    ct status dnat accept
    iifname "lan" oifname "wan" accept
  }
  chain input { type filter hook input priority 0; policy drop;
    ct state established,related accept
    iifname { "lo", "lan" } accept
  }
}
NFT
    done
}

peer_id() { python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["peer_id"])' <"$1"; }

# run SCENARIO: prints "SCENARIO: direct|relayed|none (client exit N)"
run() {
    local name=$1 server_env=() client_env=(SESSION_SECS=1) stop_relay=false
    up
    case $name in
        masquerade) ;;
        forward-server) ns rs nft add rule ip nat prerouting iifname wan tcp dport 4012 dnat to 192.168.1.2:4012 ;;
        forward-client) ns rc nft add rule ip nat prerouting iifname wan tcp dport 4013 dnat to 192.168.2.2:4013 ;;
        symmetric)
            ns rc nft flush chain ip nat postrouting
            ns rc nft add rule ip nat postrouting oifname wan masquerade random,fully-random ;;
        rst-server) ns rs nft add rule ip filter input iifname wan meta l4proto tcp reject with tcp reset ;;
        no-dcutr) server_env=(DCUTR_ENABLED=false); client_env=(DCUTR_ENABLED=false SESSION_SECS=1) ;;
        relay-stop) client_env=(SESSION_SECS=8); stop_relay=true ;;
        # The liar refuses a fallback setting (it would look like an honest fallback): switch it off.
        liar) server_env=(LAB_LIE_DIRECT=true); client_env=(LAB_LIE_DIRECT=true ALLOW_RELAY_FALLBACK=false SESSION_SECS=3) ;;
        relay-stop-relayed)
            server_env=(DCUTR_ENABLED=false)
            client_env=(DCUTR_ENABLED=false SESSION_SECS=8 DIRECT_DEADLINE_SECS=2)
            stop_relay=true ;;
        *) echo "unknown scenario $name" >&2; return 2 ;;
    esac
    local dir=$OUT/$name
    mkdir -p "$dir"
    ip netns exec "$P-t" env LIBP2P_LISTEN_MULTIADDRS=/ip4/198.18.0.10/tcp/4011 LIBP2P_IDENTITY_SEED=netns-relay \
        "$BIN/kaspa_p2p_relay" >"$dir/relay.log" 2>"$dir/relay.err" &
    RELAY_PID=$!
    for _ in $(seq 50); do grep -qs '"listening"' "$dir/relay.log" && break; sleep 0.1; done
    local relay="/ip4/198.18.0.10/tcp/4011/p2p/$(peer_id "$dir/relay.log")"
    ip netns exec "$P-s" env LIBP2P_RELAY_MULTIADDRS="$relay" LIBP2P_IDENTITY_SEED=netns-server "${server_env[@]}" \
        "$BIN/kaspa_p2p_server" >"$dir/server.log" 2>"$dir/server.err" &
    SERVER_PID=$!
    for _ in $(seq 100); do grep -qs '"reservation_accepted"' "$dir/server.log" && break; sleep 0.1; done
    local server
    server=$(peer_id "$dir/server.log")
    local code=0
    ip netns exec "$P-c" env LIBP2P_REMOTE_PEER_ID="$server" LIBP2P_REMOTE_MULTIADDRS="$relay/p2p-circuit/p2p/$server" \
        LIBP2P_IDENTITY_SEED=netns-client ALLOW_RELAY_FALLBACK=true DIRECT_DEADLINE_SECS="${DIRECT_DEADLINE_SECS:-15}" \
        "${client_env[@]}" "$BIN/kaspa_p2p_client" >"$dir/client.log" 2>"$dir/client.err" &
    CLIENT_PID=$!
    local stopped=""
    if $stop_relay; then
        # The session has started once the first pong is in; then the relay goes (SIGTERM, as the lab stops it).
        for _ in $(seq 400); do grep -qs '"kaspa_pong"' "$dir/client.log" && break; sleep 0.1; done
        kill -TERM "$RELAY_PID" 2>/dev/null || true
        wait "$RELAY_PID" 2>/dev/null || true
        RELAY_PID=""
        stopped=$(wc -l <"$dir/client.log")
    fi
    wait "$CLIENT_PID" || code=$?
    CLIENT_PID=""
    # Ground truth before anything else closes: a flow from one NAT's public address to the other's.
    local flow=no
    ns rs conntrack -L -p tcp >"$dir/rs.conntrack" 2>/dev/null || true
    ns rc conntrack -L -p tcp >"$dir/rc.conntrack" 2>/dev/null || true
    if grep -q '198\.18\.0\.3' "$dir/rs.conntrack" && grep -q '198\.18\.0\.2' "$dir/rc.conntrack"; then flow=yes; fi
    stop_peers
    local outcome=none
    if grep -q '"event":"handshake_complete".*"relayed":false' "$dir/client.log"; then
        outcome=direct
    elif grep -q '"event":"handshake_complete".*"relayed":true' "$dir/client.log"; then
        outcome=relayed
    fi
    local after=""
    if [ -n "$stopped" ]; then
        local pongs lost=no
        pongs=$(tail -n +"$((stopped + 1))" "$dir/client.log" | grep -c '"event":"kaspa_pong"' || true)
        grep -q '"event":"session_lost"' "$dir/client.log" && lost=yes
        after="; after the relay stopped: $pongs pongs, session_lost $lost"
    fi
    echo "$name: $outcome, flow: $flow (client exit $code$after; logs in $dir)"
}

if [ "$(id -u)" != 0 ]; then echo "run as root (network namespaces and nftables)" >&2; exit 2; fi
for tool in ip nft python3; do command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }; done
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(masquerade forward-server forward-client symmetric rst-server no-dcutr)
for scenario in "${scenarios[@]}"; do run "$scenario"; done
