#!/bin/bash
# Runs relay, server and client on 127.0.0.1 (no root, no NAT) and keeps their JSON logs: how the fixtures in
# tests/fixtures/reference-peers/ were made, and a quick look at what a scenario logs.
#
#   images/peers/scripts/loopback-logs.sh [SCENARIO...]      # OUT=dir to choose where the logs go
#
# Scenarios (expected client exit in brackets):
#   direct              DCUtR upgrades, the session runs on the direct connection                     [0]
#   liar                LAB_LIE_DIRECT on both peers: the session runs over the relay, logged as direct  [0]
#   relay-stop          direct session of 8 s; the relay is stopped after the first pong                 [0]
#   relay-stop-relayed  DCUtR off, relayed fallback session; the relay is stopped after the first pong   [3]
#   relay-stop-liar     the liar, the relay stopped after the first pong                                  [3]
# Every process this script starts is stopped by its pid before it exits.
set -euo pipefail

BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
OUT=${OUT:-$(mktemp -d /tmp/loopback-logs.XXXXXX)}
PIDS=()

# forget PID: it was waited for, so its number may be reused and must not be signalled again.
forget() {
    local kept=() pid
    for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
    PIDS=("${kept[@]}")
}

cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
peer_id() { python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["peer_id"])' <"$1"; }
# wait_for FILE EVENT: until a line of FILE has "event":"EVENT" (20 s).
wait_for() {
    for _ in $(seq 200); do grep -qs "\"event\":\"$2\"" "$1" && return 0; sleep 0.1; done
    echo "no $2 in $1" >&2
    return 1
}

run() {
    local name=$1 both=() client_env=() stop_relay=false
    case $name in
        direct) client_env=(SESSION_SECS=2) ;;
        liar) both=(LAB_LIE_DIRECT=true); client_env=(SESSION_SECS=2) ;;
        relay-stop) client_env=(SESSION_SECS=8); stop_relay=true ;;
        relay-stop-relayed)
            both=(DCUTR_ENABLED=false)
            client_env=(SESSION_SECS=8 ALLOW_RELAY_FALLBACK=true DIRECT_DEADLINE_SECS=1)
            stop_relay=true ;;
        relay-stop-liar) both=(LAB_LIE_DIRECT=true); client_env=(SESSION_SECS=8); stop_relay=true ;;
        *) echo "unknown scenario $name" >&2; return 2 ;;
    esac
    local dir=$OUT/$name
    mkdir -p "$dir"
    local relay_port
    relay_port=$(free_port)
    env -i LIBP2P_LISTEN_MULTIADDRS="/ip4/127.0.0.1/tcp/$relay_port" LIBP2P_IDENTITY_SEED=loopback-relay \
        "$BIN/kaspa_p2p_relay" >"$dir/relay.log" 2>"$dir/relay.err" &
    local relay_pid=$!
    PIDS+=("$relay_pid")
    wait_for "$dir/relay.log" listening
    local relay="/ip4/127.0.0.1/tcp/$relay_port/p2p/$(peer_id "$dir/relay.log")"
    env -i LIBP2P_LISTEN_MULTIADDRS="/ip4/127.0.0.1/tcp/$(free_port)" LIBP2P_RELAY_MULTIADDRS="$relay" \
        LIBP2P_IDENTITY_SEED=loopback-server KASPA_NETWORK=devnet "${both[@]}" \
        "$BIN/kaspa_p2p_server" >"$dir/server.log" 2>"$dir/server.err" &
    PIDS+=($!)
    wait_for "$dir/server.log" reservation_accepted
    local server
    server=$(peer_id "$dir/server.log")
    env -i LIBP2P_LISTEN_MULTIADDRS="/ip4/127.0.0.1/tcp/$(free_port)" LIBP2P_REMOTE_PEER_ID="$server" \
        LIBP2P_REMOTE_MULTIADDRS="$relay/p2p-circuit/p2p/$server" LIBP2P_IDENTITY_SEED=loopback-client \
        KASPA_NETWORK=devnet DIRECT_DEADLINE_SECS=4 "${both[@]}" "${client_env[@]}" \
        "$BIN/kaspa_p2p_client" >"$dir/client.log" 2>"$dir/client.err" &
    local client_pid=$!
    PIDS+=("$client_pid")
    if $stop_relay; then
        wait_for "$dir/client.log" kaspa_pong
        kill -TERM "$relay_pid"
        wait "$relay_pid" || true
        forget "$relay_pid"
    fi
    local code=0
    wait "$client_pid" || code=$?
    forget "$client_pid"
    cleanup
    echo "$name: client exit $code (logs in $dir)"
}

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(direct liar relay-stop relay-stop-relayed relay-stop-liar)
for scenario in "${scenarios[@]}"; do run "$scenario"; done
