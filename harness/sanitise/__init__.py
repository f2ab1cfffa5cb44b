"""Replace addresses, host names, users and secrets with stable placeholders, so reports can be published.

One `Sanitiser` lives for one run: the same real value always maps to the same placeholder, so facts compared
across nodes (an address one peer logs, the address the other one dials) still compare equal after
sanitising, and checkpoint matching runs on sanitised text only. The real-to-placeholder map stays in memory:
`restore()` uses it to turn a templated env value back into a real address before a node starts; no report
ever receives it.

Modules:
- `addresses`: IPv4/IPv6 in every spelling (multiaddrs, `ip:port`, `[v6]:port`, `v6:port`, zones, leading zeros,
  glued to letters, after a `word:` label), Rust byte arrays, tcpdump's `ip.port`, host names that spell an
  address;
- `names`: host names and users where the context says so (`user@host`, URLs, ssh, DNS answers, `/home/U`,
  sshd, sudo, `user=`), and the names an inventory gives;
- `secrets`: named values (`password=`, `--rpcpass`, `*_PASS=`, `token:`...), token formats, libp2p keys, URL
  passwords, cookies, mnemonics, private key blocks;
- `gates`: one RE2 pass per line deciding whether `secrets` and `names` need to look at all;
- `core`: `Sanitiser`: terminal escapes, URL/JSON escapes, the order of the passes, the placeholders.

Kept: peer ids (public keys; `hash_peer_ids=True` replaces them by a stable hash), timestamps, ports,
loopback and unspecified addresses, version numbers (`kaspad 0.12.17.1`, `kaspad/1.2.3.4`, `v1.2.3.4`).

Every pass is linear in the length of the line (bounded candidates, look-behinds so each token is scanned a
bounded number of times); `python -m harness.bench sanitise` measures lines/s and memory.
"""

from harness.sanitise.core import Sanitiser, is_placeholder, placeholder_name

__all__ = ["Sanitiser", "is_placeholder", "placeholder_name"]
