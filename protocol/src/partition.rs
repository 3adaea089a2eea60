//! Which partition a saga belongs to.
//!
//! An installation has a fixed number of partitions, chosen at its first
//! start. A saga started with an idempotency key belongs to the partition
//! of its key ([`of_key`]), so that the same key gives the same saga
//! whichever engine receives the start. Its id says its partition
//! ([`of_saga`]): with more than one partition, the engine writes the
//! partition number into the 12 bits a UUIDv7 leaves to the generator
//! after its millisecond timestamp (`rand_a`, the three hex digits after
//! the version digit `7`). With one partition every saga is in partition
//! 0, whatever its id.
//!
//! ```
//! use jetsaga_protocol::partition;
//! let id = "0190f1c2-3a4b-7003-8c5d-6e7f80910203";
//! assert_eq!(partition::of_saga(id, 4), 3);
//! assert_eq!(partition::of_saga(id, 1), 0);
//! assert_eq!(partition::of_key("order-42", 1), 0);
//! assert!(partition::of_key("order-42", 8) < 8);
//! ```

/// The most partitions an installation can have: a saga id carries its
/// partition in 12 bits.
pub const MAX_PARTITIONS: u32 = 4096;

/// The partition of idempotency key `key` in an installation of
/// `partitions`: 32-bit FNV-1a of the key's UTF-8 bytes, modulo the count.
pub fn of_key(key: &str, partitions: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in key.as_bytes() {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions.max(1)
}

/// The partition of saga `id` in an installation of `partitions`: the
/// number in its `rand_a` bits, modulo the count (0 for an id that is not
/// a UUID).
pub fn of_saga(id: &str, partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    let bits = id
        .get(15..18)
        .filter(|_| id.len() == 36 && id.as_bytes()[14] == b'7')
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .unwrap_or(0);
    bits % partitions
}

/// `uuid` (the 36-character text of a UUIDv7) with `partition` written
/// into its `rand_a` bits, so that [`of_saga`] reads it back. An id that is
/// not a UUIDv7's text comes back unchanged.
pub fn mark_saga_id(uuid: &str, partition: u32) -> String {
    if uuid.len() != 36 || uuid.as_bytes()[14] != b'7' || partition >= MAX_PARTITIONS {
        return uuid.to_string();
    }
    format!("{}{:03x}{}", &uuid[..15], partition, &uuid[18..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_id_reads_back_its_partition() {
        let id = "0190f1c2-3a4b-7fff-8c5d-6e7f80910203";
        for p in [0, 1, 7, 255, 4095] {
            let marked = mark_saga_id(id, p);
            assert_eq!(marked.len(), 36);
            assert_eq!(&marked[..14], &id[..14], "the timestamp and version stay");
            assert_eq!(&marked[18..], &id[18..], "the rest stays");
            assert_eq!(of_saga(&marked, MAX_PARTITIONS), p);
            assert_eq!(of_saga(&marked, 4096), p % 4096);
        }
    }

    #[test]
    fn one_partition_is_partition_zero() {
        assert_eq!(of_saga("anything", 1), 0);
        assert_eq!(of_saga("0190f1c2-3a4b-7fff-8c5d-6e7f80910203", 1), 0);
        assert_eq!(of_key("anything", 1), 0);
        assert_eq!(of_key("anything", 0), 0);
    }

    #[test]
    fn keys_spread_and_are_stable() {
        // The hash is part of the installation's contract: pinned.
        assert_eq!(of_key("", 1 << 31), 0x811c_9dc5 % (1 << 31));
        assert_eq!(of_key("a", u32::MAX), 0xe40c_292c);
        let mut seen = [0u32; 8];
        for i in 0..8000 {
            seen[of_key(&format!("order-{i}"), 8) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (700..1300).contains(&n)), "{seen:?}");
    }

    #[test]
    fn ids_that_are_not_uuid_v7_are_partition_zero() {
        assert_eq!(of_saga("not-a-uuid", 4), 0);
        assert_eq!(of_saga("0190f1c2-3a4b-4fff-8c5d-6e7f80910203", 4), 0);
        assert_eq!(mark_saga_id("short", 3), "short");
    }
}
