//! The outbox: messages to publish, written with the state change that
//! caused them ([`OutboxTable`]).

use crate::StoreError;
use serde::{Deserialize, Serialize};

/// A message to publish to JetStream, written to the outbox in the same
/// transaction as the state change that caused it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxMessage {
    /// Subject to publish on.
    pub subject: String,
    /// `Nats-Msg-Id` header: JetStream drops a second publish with the same id.
    pub msg_id: String,
    /// Other headers.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Message body. In JSON a UTF-8 body is a string (the common case:
    /// tasks and events are JSON), any other an array of byte values, the
    /// form rows written before took; both are read.
    #[serde(with = "payload")]
    pub payload: Vec<u8>,
}

/// The JSON form of [`OutboxMessage::payload`].
mod payload {
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.collect_seq(bytes),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Payload;
        impl<'de> Visitor<'de> for Payload {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                Ok(v.as_bytes().to_vec())
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Vec<u8>, E> {
                Ok(v.into_bytes())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_any(Payload)
    }
}

/// Outbox rows by sequence, in commit order. Rows are added by
/// [`crate::GroupCommit`]; the relay reads the durable ones, publishes them
/// and removes them; the metrics read the count.
pub trait OutboxTable: Send + Sync {
    /// Up to `limit` outbox rows in commit order, the oldest first, none
    /// with a sequence above `through` (the relay passes
    /// [`crate::GroupCommit::outbox_durable`], so rows not yet durable are
    /// not even read).
    fn outbox(&self, through: u64, limit: usize) -> Result<Vec<(u64, OutboxMessage)>, StoreError>;
    /// Removes published outbox rows.
    fn outbox_remove(&self, seqs: &[u64]) -> Result<(), StoreError>;
    /// Number of outbox rows.
    fn outbox_len(&self) -> usize;
}

#[cfg(test)]
mod tests {
    use super::OutboxMessage;

    fn message(payload: &[u8]) -> OutboxMessage {
        OutboxMessage {
            subject: "s".into(),
            msg_id: "m".into(),
            headers: vec![],
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn a_utf8_payload_is_a_string_and_any_other_an_array_and_both_read_back() {
        let text = message(br#"{"a":1}"#);
        let json = serde_json::to_string(&text).unwrap();
        assert!(json.contains(r#""payload":"{\"a\":1}""#), "{json}");
        assert_eq!(serde_json::from_str::<OutboxMessage>(&json).unwrap(), text);
        let binary = message(&[0xff, 0x00, 0x7b]);
        let json = serde_json::to_string(&binary).unwrap();
        assert!(json.contains(r#""payload":[255,0,123]"#), "{json}");
        assert_eq!(
            serde_json::from_str::<OutboxMessage>(&json).unwrap(),
            binary
        );
    }
}
