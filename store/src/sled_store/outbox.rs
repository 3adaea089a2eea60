//! [`OutboxTable`] on sled, and the outbox frame rows are stored as.

use super::SledStore;
use super::codec::{decode, encode, frame, tx_error, u64_of, unframe};
use crate::{OutboxMessage, OutboxTable, StoreError};
use std::sync::atomic::Ordering;

/// The header of an outbox frame: everything but the payload.
#[derive(serde::Serialize)]
struct OutboxHeaderRef<'a> {
    subject: &'a str,
    msg_id: &'a str,
    headers: &'a [(String, String)],
}

/// [`OutboxHeaderRef`], read back.
#[derive(serde::Deserialize)]
struct OutboxHeader {
    subject: String,
    msg_id: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
}

/// A frame of the message's header and its raw payload.
pub(super) fn encode_outbox(key: &[u8], msg: &OutboxMessage) -> Result<Vec<u8>, StoreError> {
    let header = encode(
        "outbox",
        key,
        &OutboxHeaderRef {
            subject: &msg.subject,
            msg_id: &msg.msg_id,
            headers: &msg.headers,
        },
    )?;
    frame("outbox", key, &header, msg.payload.len(), |row| {
        row.extend_from_slice(&msg.payload);
        Ok(())
    })
}

/// Reads an outbox row: a frame, or the JSON of rows written before frames.
fn decode_outbox(key: &[u8], bytes: &[u8]) -> Result<OutboxMessage, StoreError> {
    let Some((header, payload)) = unframe("outbox", key, bytes)? else {
        return decode("outbox", key, bytes);
    };
    let header: OutboxHeader = decode("outbox", key, header)?;
    Ok(OutboxMessage {
        subject: header.subject,
        msg_id: header.msg_id,
        headers: header.headers,
        payload: payload.to_vec(),
    })
}
impl OutboxTable for SledStore {
    fn outbox(&self, through: u64, limit: usize) -> Result<Vec<(u64, OutboxMessage)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.outbox.range(..=through.to_be_bytes()).take(limit) {
            let (key, bytes) = entry?;
            let seq = u64_of("outbox", &key, &key)?;
            out.push((seq, decode_outbox(&key, &bytes)?));
        }
        Ok(out)
    }

    fn outbox_remove(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let removed = self
            .outbox
            .transaction(|outbox| {
                let mut removed = 0usize;
                for seq in seqs {
                    if outbox.remove(&seq.to_be_bytes())?.is_some() {
                        removed += 1;
                    }
                }
                Ok(removed)
            })
            .map_err(tx_error)?;
        self.outbox_rows.fetch_sub(removed, Ordering::Relaxed);
        Ok(())
    }

    fn outbox_len(&self) -> usize {
        self.outbox_rows.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sled_store::codec::is_frame;
    use crate::sled_store::test_support::*;

    #[test]
    fn outbox_keeps_commit_order_and_pages() {
        let store = SledStore::temporary().unwrap();
        for batch in 0..5u32 {
            store
                .commit(Change {
                    outbox: (0..3).map(|i| msg(batch * 3 + i)).collect(),
                    ..Change::default()
                })
                .unwrap();
        }
        let all = store.outbox(u64::MAX, 100).unwrap();
        let got: Vec<_> = all.iter().map(|(_, m)| m.clone()).collect();
        assert_eq!(got, (0..15).map(msg).collect::<Vec<_>>());
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(store.outbox_len(), 15);

        let first = store.outbox(u64::MAX, 4).unwrap();
        assert_eq!(first.len(), 4);
        // Nothing above `through` is read.
        let upto = store.outbox(first[1].0, 100).unwrap();
        assert_eq!(upto, first[..2].to_vec());
        assert_eq!(store.outbox(u64::MAX, 0).unwrap(), vec![]);

        let seqs: Vec<u64> = first.iter().map(|(s, _)| *s).collect();
        store.outbox_remove(&seqs).unwrap();
        // Removing again (or an unknown seq) is harmless.
        store.outbox_remove(&[seqs[0], u64::MAX]).unwrap();
        assert_eq!(store.outbox_len(), 11);
        assert_eq!(store.outbox(u64::MAX, 1).unwrap()[0].1, msg(4));
    }

    #[test]
    fn outbox_rows_are_frames_with_raw_payloads_and_old_json_rows_still_read() {
        let store = SledStore::temporary().unwrap();
        let mut big = msg(7);
        big.payload = (0..=255u8).cycle().take(10_000).collect();
        store
            .commit(Change {
                outbox: vec![big.clone()],
                ..Change::default()
            })
            .unwrap();
        let (seq, row) = store.outbox(u64::MAX, 1).unwrap().remove(0);
        assert_eq!(row, big);
        let stored = store.outbox.get(seq.to_be_bytes()).unwrap().unwrap();
        assert!(is_frame(&stored));
        assert!(stored.len() < big.payload.len() + 100, "{}", stored.len());

        // A row as the JSON format wrote it (say, before an upgrade).
        let old = msg(3);
        let key = (seq + 1).to_be_bytes();
        store
            .outbox
            .insert(key, serde_json::to_vec(&old).unwrap())
            .unwrap();
        let rows: Vec<_> = store.outbox(u64::MAX, 10).unwrap();
        assert_eq!(rows, vec![(seq, big), (seq + 1, old)]);

        // A cut frame is reported as corrupt, never read as a short payload.
        store
            .outbox
            .insert(key, &[0x01, 0, 0, 1, 0, b'{'][..])
            .unwrap();
        let err = store.outbox(u64::MAX, 10).unwrap_err();
        let cut = format!("outbox/{}", seq + 1);
        assert!(
            matches!(&err, StoreError::Corrupt { key, .. } if *key == cut),
            "{err}"
        );
    }

    #[test]
    fn outbox_rows_are_durable_after_a_flush_and_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.outbox_durable(), None);
        store
            .commit(Change {
                outbox: vec![msg(1), msg(2)],
                ..Change::default()
            })
            .unwrap();
        let last = store.outbox(u64::MAX, 10).unwrap()[1].0;
        // Written, not flushed: not durable yet.
        assert_eq!(store.outbox_durable(), None);
        // A flush covers what was written before it was asked for.
        let flush = store.flush();
        store
            .commit(Change {
                outbox: vec![msg(3)],
                ..Change::default()
            })
            .unwrap();
        futures::executor::block_on(flush).unwrap();
        assert_eq!(store.outbox_durable(), Some(last));
        futures::executor::block_on(store.flush()).unwrap();
        let newest = store.outbox(u64::MAX, 10).unwrap()[2].0;
        assert_eq!(store.outbox_durable(), Some(newest));
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.outbox_durable(), Some(newest));
    }
}
