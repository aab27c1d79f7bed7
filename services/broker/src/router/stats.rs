//! Figures for `$SYS` and `/metrics` that the router counts on demand rather than
//! tracking on every change (see `sys.rs`).

use std::collections::BTreeMap;
use std::ops::Bound;

use ntex_bytes::ByteString;

use super::{Message, Router};

impl Router {
    /// Subscriptions held by all sessions, connected or not.
    pub fn subscription_count(&self) -> usize {
        self.lock().index.len()
    }
}

/// Retained messages clients published: the broker's own `$SYS` values are not counted,
/// so the figure means the same with `$SYS` on or off.
pub(super) fn client_retained(retained: &BTreeMap<ByteString, Message>) -> i64 {
    let sys = retained
        .range::<str, _>((Bound::Included("$SYS"), Bound::Excluded("$SYS0")))
        .filter(|(t, _)| crate::auth::is_sys(t))
        .count();
    (retained.len() - sys) as i64
}
