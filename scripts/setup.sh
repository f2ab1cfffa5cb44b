#!/usr/bin/env bash
# Installs what the lab needs on a fresh Debian 12 host with Docker. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# mmdebstrap for the offline base image, nftables/conntrack for host-side checks; protobuf-compiler, clang and
# libclang-dev build the fork's kaspad (the kaspad-bridge SUT file's build.packages).
need_apt=()
# ssh: OpenSSH's client, which ansible-playbook uses in the fleet e2e tests (the harness itself uses paramiko).
for tool in mmdebstrap nft conntrack protoc clang ssh; do
  command -v "$tool" >/dev/null 2>&1 || need_apt+=("$tool")
done
dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q "install ok installed" || need_apt+=(libclang-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages (${need_apt[*]})"
  pkgs=(mmdebstrap nftables conntrack protobuf-compiler clang libclang-dev openssh-client)
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

echo "setup: installing the harness (pip install -e '.[test]')"
python3 -m pip install -q --disable-pip-version-check -e '.[test]'

if [ -f images/peers/Cargo.toml ]; then
  echo "setup: building the Rust reference peers (cargo build --release)"
  (cd images/peers && cargo build --release --quiet)
fi
