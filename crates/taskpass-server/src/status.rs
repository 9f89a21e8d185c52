//! Token status lists (draft-ietf-oauth-status-list-19): every token carries
//! `status.status_list {idx, uri}`, and `GET /statuslists/{n}` serves list `n` as a signed
//! Status List Token (`typ` statuslist+jwt, one bit per token, 1 = INVALID), so validators in
//! any language check revocation from a cached list, without gRPC.
//!
//! Positions are handed out in order, [`STATUS_LIST_SIZE`] to a list: a list is filled once
//! and never reused (a list whose tokens have all expired is simply never asked for again), so
//! every list stays small (2 KiB before compression, far less after: almost every bit is 0).
//! The next position after a restart follows the highest one recorded; positions given to
//! tokens whose record never committed are skipped, never given twice.
//!
//! A list is built from the store (which token holds which position) and the revocation log
//! (the same [`RevocationSet`] validators keep), and rebuilt when the log has moved or the
//! cached copy is older than half its `ttl`.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use taskpass_core::{RevocationSet, STATUS_LIST_SIZE, TokenStatus};
use taskpass_store::{Store, StoreError};

/// How long a signed list stays valid (`exp` − `iat`), seconds.
const STATUS_LIST_LIFETIME: i64 = 300;

/// The status lists of one broker.
#[derive(Debug)]
pub(crate) struct StatusLists {
    /// `https://broker/statuslists`.
    base: String,
    /// How long validators may cache a list, seconds (`validation.status_list_ttl_seconds`).
    ttl: u64,
    next: AtomicU64,
    state: tokio::sync::Mutex<Built>,
}

#[derive(Debug, Default)]
struct Built {
    /// The revocation log read so far.
    cursor: u64,
    revoked: RevocationSet,
    /// List → (built when, log cursor then, the signed list).
    lists: HashMap<u64, (Instant, u64, String)>,
}

impl StatusLists {
    /// Lists served under `issuer` with this `ttl` (seconds), handing out positions after
    /// `last` (the highest recorded).
    pub(crate) fn new(issuer: &str, ttl: u32, last: Option<u64>) -> Self {
        Self {
            base: format!("{}/statuslists", issuer.trim_end_matches('/')),
            ttl: u64::from(ttl.max(1)),
            next: AtomicU64::new(last.map_or(0, |l| l + 1)),
            state: tokio::sync::Mutex::new(Built::default()),
        }
    }

    /// A fresh position and the claim that names it.
    pub(crate) fn allocate(&self) -> (u64, TokenStatus) {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        (index, TokenStatus::at(&self.base, index))
    }

    /// How long validators may cache a list, seconds.
    pub(crate) fn ttl(&self) -> u64 {
        self.ttl
    }

    /// The signed list `n`, or `None` for a list no token was given yet.
    pub(crate) async fn signed(
        &self,
        n: u64,
        store: &dyn Store,
        keys: &crate::keys::KeyRing,
        issuer: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        if n > self.next.load(Ordering::Relaxed) / STATUS_LIST_SIZE {
            return Ok(None);
        }
        let mut state = self.state.lock().await;
        loop {
            let page = store.revocations_after(state.cursor, 512).await?;
            let Some(last) = page.last() else { break };
            state.cursor = last.sequence;
            for e in &page {
                state.revoked.apply(e, now);
            }
        }
        if let Some((at, cursor, jwt)) = state.lists.get(&n)
            && *cursor == state.cursor
            && at.elapsed() < Duration::from_millis(self.ttl * 500)
        {
            return Ok(Some(jwt.clone()));
        }
        let from = n * STATUS_LIST_SIZE;
        let tokens = store.status_entries(from, from + STATUS_LIST_SIZE).await?;
        let mut bits = vec![0u8; usize::try_from(STATUS_LIST_SIZE / 8).unwrap_or(2048)];
        for t in &tokens {
            let Some(i) = t.status_index else { continue };
            let (jti, txn) = (t.id.to_string(), t.task.to_string());
            let revoked = t.revoked_at.is_some()
                || state
                    .revoked
                    .covers(
                        &jti,
                        &txn,
                        t.agent.as_str(),
                        t.issued_at,
                        t.certificate.as_deref(),
                    )
                    .is_err();
            if revoked {
                let bit = usize::try_from(i - from).unwrap_or(0);
                if let Some(byte) = bits.get_mut(bit / 8) {
                    *byte |= 1 << (bit % 8);
                }
            }
        }
        let claims = serde_json::json!({
            "iss": issuer,
            "sub": format!("{}/{n}", self.base),
            "iat": now,
            "exp": now + STATUS_LIST_LIFETIME,
            "ttl": self.ttl,
            "status_list": {"bits": 1, "lst": URL_SAFE_NO_PAD.encode(zlib(&bits))},
        });
        let jwt = keys
            .sign_json("statuslist+jwt", &claims)
            .map_err(|e| StoreError::Encode {
                what: "status list",
                detail: e.to_string(),
            })?;
        let cursor = state.cursor;
        state.lists.insert(n, (Instant::now(), cursor, jwt.clone()));
        // Only the lists asked for recently are kept.
        state
            .lists
            .retain(|_, (at, _, _)| at.elapsed() < Duration::from_secs(self.ttl * 4));
        Ok(Some(jwt))
    }
}

/// DEFLATE in the ZLIB format (RFC 1950), as the draft requires.
fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_fill_one_list_then_the_next() {
        let s = StatusLists::new("https://b/", 30, Some(STATUS_LIST_SIZE - 2));
        let (i, claim) = s.allocate();
        assert_eq!(i, STATUS_LIST_SIZE - 1);
        assert_eq!(claim.status_list.idx, STATUS_LIST_SIZE - 1);
        assert_eq!(claim.status_list.uri, "https://b/statuslists/0");
        let (_, claim) = s.allocate();
        assert_eq!(claim.status_list.idx, 0);
        assert_eq!(claim.status_list.uri, "https://b/statuslists/1");
        assert_eq!(StatusLists::new("https://b", 30, None).allocate().0, 0);
    }

    #[test]
    fn an_empty_list_compresses_to_almost_nothing() {
        let z = zlib(&vec![0u8; 2048]);
        assert!(z.len() < 40, "{}", z.len());
        let mut d = flate2::read::ZlibDecoder::new(z.as_slice());
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut out).unwrap_or_default();
        assert_eq!(out, vec![0u8; 2048]);
    }
}
