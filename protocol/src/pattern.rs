//! NATS subject patterns (`*` one token, `>` the rest): which patterns
//! cover, collide with or partly overlap each other, as JetStream judges
//! streams' and consumers' subjects.

/// Whether every subject `inner` matches is matched by `outer` too.
pub fn covers(outer: &str, inner: &str) -> bool {
    let (mut o, mut i) = (outer.split('.'), inner.split('.'));
    loop {
        match (o.next(), i.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some subject matches both patterns.
pub fn collide(a: &str, b: &str) -> bool {
    let (mut x, mut y) = (a.split('.'), b.split('.'));
    loop {
        match (x.next(), y.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some subject matches both patterns while neither covers the
/// other (`a.*.c`, `a.b.*`): JetStream refuses such a pair in one stream.
pub fn overlap_in_part(a: &str, b: &str) -> bool {
    collide(a, b) && !covers(a, b) && !covers(b, a)
}

/// `subjects` without duplicates and without those another one covers,
/// sorted: what a stream or a consumer filter may list.
pub fn reduce(subjects: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut all: Vec<String> = subjects.into_iter().collect();
    all.sort();
    all.dedup();
    all.iter()
        .filter(|s| !all.iter().any(|o| o != *s && covers(o, s)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_cover_and_collide() {
        assert!(covers("orders.created", "orders.created"));
        assert!(covers("orders.*", "orders.created"));
        assert!(covers("orders.>", "orders.eu.created"));
        assert!(!covers("orders.>", "orders"));
        assert!(!covers("orders.*", "orders.eu.created"));
        assert!(covers("orders.>", "orders.*"));
        assert!(covers("orders.*", "orders.created"));
        assert!(!covers("orders.*", "orders.>"));
        assert!(collide("orders.*.x", "orders.eu.*"));
        assert!(!collide("orders.a", "orders.b"));
        assert!(!collide("orders.>", "orders"));
        assert!(overlap_in_part("orders.*.x", "orders.eu.*"));
        assert!(!overlap_in_part("orders.>", "orders.eu.*"));
        assert_eq!(
            reduce(["a.b".into(), "a.*".into(), "c".into(), "a.*".into()]),
            vec!["a.*".to_string(), "c".to_string()]
        );
    }
}
