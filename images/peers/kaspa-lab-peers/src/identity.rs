//! Deterministic identities: the same seed always gives the same peer id, so runbooks can be written
//! against known peers and logs of two runs compare line by line. The seed itself is never logged.

use libp2p::identity::Keypair;
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, Source, KEY_FILE, SEED};

pub fn from_seed(seed: &str) -> Keypair {
    let secret: [u8; 32] = Sha256::digest(seed.as_bytes()).into();
    // An ed25519 secret is any 32 bytes, so this cannot fail.
    Keypair::ed25519_from_bytes(secret).unwrap_or_else(|_| Keypair::generate_ed25519())
}

/// The keypair from the key file, else from the seed, else a fresh random one.
pub fn load(source: &Source) -> Result<Keypair, ConfigError> {
    if let Some(path) = source.string(&KEY_FILE) {
        let bytes = std::fs::read(&path).map_err(|error| ConfigError {
            variable: KEY_FILE.env,
            message: format!("cannot read {path:?}: {error}"),
        })?;
        return Keypair::from_protobuf_encoding(&bytes).map_err(|error| ConfigError {
            variable: KEY_FILE.env,
            message: format!("{path:?} is not a protobuf-encoded keypair: {error}"),
        });
    }
    Ok(match source.string(&SEED) {
        Some(seed) => from_seed(&seed),
        None => Keypair::generate_ed25519(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_peer() {
        assert_eq!(
            from_seed("2").public().to_peer_id(),
            from_seed("2").public().to_peer_id()
        );
        assert_ne!(
            from_seed("2").public().to_peer_id(),
            from_seed("3").public().to_peer_id()
        );
    }
}
