//! The number of a libp2p `ConnectionId`, as every `connection_id` fact carries it (`ConnectionId(7)` → `7`).
//!
//! libp2p-swarm 0.47's `ConnectionId` is a process-wide `usize` counter with no accessor for it. What it does
//! offer is `ConnectionId::new_unchecked(usize)` and an `Ord` derived over that same `usize`, so the number
//! is the greatest `n` with `new_unchecked(n) <= id`: a bisection of at most 64 comparisons, no text parsed,
//! no state kept, and the same number libp2p's own `Debug`/`Display` show. The unit tests pin that relation,
//! so a libp2p upgrade that changes it fails here rather than in the logs.

use libp2p::swarm::ConnectionId;

/// The number libp2p gave this connection.
pub fn number(id: ConnectionId) -> u64 {
    // Invariant: new_unchecked(low) <= id, and the number is at most `high`.
    let (mut low, mut high) = (0usize, usize::MAX);
    while low < high {
        let mid = low + (high - low).div_ceil(2);
        if ConnectionId::new_unchecked(mid) <= id {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    u64::try_from(low).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_the_number_libp2p_gave() {
        let max = usize::MAX;
        for n in [
            0,
            1,
            2,
            3,
            7,
            8,
            255,
            256,
            1 << 20,
            123_456_789,
            max / 2,
            max - 1,
            max,
        ] {
            let id = ConnectionId::new_unchecked(n);
            assert_eq!(number(id), n as u64);
            // The same number libp2p prints.
            assert_eq!(id.to_string(), n.to_string());
            assert_eq!(format!("{id:?}"), format!("ConnectionId({n})"));
        }
    }
}
