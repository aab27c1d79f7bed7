//! Replies in order: an acknowledgement whose record is not on disk yet waits, and so
//! does every reply behind it [MQTT-4.6.0-2].

use ntex_bytes::BytePages;

use super::{Active, Proto};
use crate::net::Cx;
use crate::net::conn::Output;

impl Active {
    /// Queues a reply: written now if nothing waits before it and its record (if any)
    /// is on disk, else in line. `puback`: it acknowledges a QoS 1 publish.
    pub fn reply(
        &mut self,
        out: &mut Output,
        cx: &mut Cx<'_>,
        lsn: u64,
        puback: bool,
        encode: impl FnOnce(&Proto, &mut BytePages),
    ) {
        if self.replies.is_empty() && cx.durable(lsn) {
            encode(&self.proto, out.pages());
            return;
        }
        let mut pages = BytePages::default();
        encode(&self.proto, &mut pages);
        if self.replies.is_empty() {
            cx.wait_durable(lsn.max(1));
        }
        self.waiting_pubacks += u32::from(puback);
        self.replies.push_back((lsn, pages.freeze(), puback));
    }

    /// QoS 1 publishes whose PUBACK waits for the store.
    pub fn waiting_pubacks(&self) -> usize {
        self.waiting_pubacks as usize
    }

    /// Writes the replies whose records are durable now; true if any was written.
    pub fn release_replies(&mut self, durable: u64, out: &mut Output) -> bool {
        let mut released = false;
        while let Some((lsn, _, _)) = self.replies.front()
            && *lsn <= durable
        {
            if let Some((_, bytes, puback)) = self.replies.pop_front() {
                out.pages().append(bytes);
                self.waiting_pubacks -= u32::from(puback);
                released = true;
            }
        }
        released
    }

    /// The sequence number the first waiting reply needs.
    pub fn next_reply_lsn(&self) -> Option<u64> {
        self.replies.front().map(|(lsn, _, _)| (*lsn).max(1))
    }
}
