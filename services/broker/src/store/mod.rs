//! The broker's embedded on-disk store: an append-only log of state changes (retained
//! messages, persistent sessions, their subscriptions, the QoS 1/2 messages owed to
//! them and the last stamps their clients' readings got), written by one thread with
//! group commit.
//!
//! - [`record`]: the framed, CRC-checked record format.
//! - [`recover`]: replays the log at start-up into the state the router starts from.
//! - this file: the [`Store`] handle. The router encodes records into a shared buffer
//!   *under its own lock* (so the log order is the state-change order) and gets back a
//!   log sequence number; the writer thread swaps the buffer out, writes it, `fsync`s
//!   once for everything that accumulated meanwhile (group commit), and publishes the
//!   durable sequence number. A QoS ≥ 1 publisher's PUBACK/PUBREC waits for it
//!   (the workers are told through [`Store::on_commit`], `session/replies.rs` holds the reply
//!   until [`Store::durable_seq`] covers it), so an acknowledged message is on disk
//!   before the ack leaves.
//! - Compaction: when the log has grown past `compact_bytes`, the router writes a
//!   snapshot of its live state as records ([`Store::compact`]); the writer puts it in
//!   `broker.log.tmp`, `fsync`s, and renames it over `broker.log` (atomic on POSIX), so
//!   a crash at any point leaves either the old or the new log.
//!
//! With no data directory the store is disabled: nothing is written, every sequence
//! number is durable at once, and the broker keeps state in memory only.

pub mod record;
pub mod recover;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

pub use record::Record;

/// See `Inner::on_commit`.
type OnCommit = Box<dyn Fn(u64) + Send + Sync>;

const LOG: &str = "broker.log";
const TMP: &str = "broker.log.tmp";

/// Cheap to clone; all clones share one writer thread.
#[derive(Clone)]
pub struct Store {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Everything up to this sequence number is on disk.
    durable: AtomicU64,
    /// Bytes appended to the current log file since it was last compacted.
    log_bytes: AtomicU64,
    /// `fsync`s done: with group commit, far fewer than records under concurrent load.
    syncs: AtomicU64,
    compact_bytes: u64,
    /// Set while a compaction is queued, so the router asks for only one at a time.
    compacting: AtomicBool,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Told the durable sequence number after each commit: the network workers, whose
    /// connections hold acknowledgements until their records are on disk.
    on_commit: Mutex<Vec<OnCommit>>,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// Sequence number of the last record appended (records are numbered from 1).
    lsn: u64,
    /// A snapshot to replace the log with; records in `buf` come after it.
    snapshot: Option<Vec<u8>>,
    stop: bool,
}

impl Store {
    /// A store that keeps nothing (no data directory configured).
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// Opens (creating) `dir` and returns the store plus the records already in its log.
    /// The writer thread appends to the same file, after any torn tail is cut off.
    pub fn open(dir: &Path, compact_bytes: u64) -> std::io::Result<(Self, Vec<record::Owned>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (records, valid) = recover::read_all(&data);
        if valid < data.len() {
            tracing::warn!(
                kept = valid,
                dropped = data.len() - valid,
                "broker log had a torn tail (crash mid-write); truncating it"
            );
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.set_len(valid as u64)?;
        file.sync_all()?;
        let inner = Arc::new(Inner {
            pending: Mutex::default(),
            wake: Condvar::new(),
            durable: AtomicU64::new(0),
            log_bytes: AtomicU64::new(valid as u64),
            syncs: AtomicU64::new(0),
            compact_bytes: compact_bytes.max(4096),
            compacting: AtomicBool::new(false),
            writer: Mutex::new(None),
            on_commit: Mutex::default(),
        });
        let writer = Writer {
            inner: inner.clone(),
            dir: dir.to_owned(),
            file,
        };
        let handle = std::thread::Builder::new()
            .name("broker-store".into())
            .spawn(move || writer.run())?;
        *inner.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok((Self { inner: Some(inner) }, records))
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues one record; returns its sequence number (0 when disabled). Call under the
    /// router lock so the log order matches the order of the state changes.
    pub fn append(&self, rec: &Record<'_>) -> u64 {
        let Some(inner) = &self.inner else { return 0 };
        let mut p = inner.lock();
        let was_empty = p.buf.is_empty();
        record::encode(rec, &mut p.buf);
        p.lsn += 1;
        let lsn = p.lsn;
        drop(p);
        if was_empty {
            inner.wake.notify_one();
        }
        lsn
    }

    /// Everything up to this sequence number is on disk (`u64::MAX` when disabled:
    /// nothing ever waits).
    pub fn durable_seq(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(u64::MAX, |i| i.durable.load(Ordering::Acquire))
    }

    /// Calls `f` with the durable sequence number after every commit (from the
    /// writer thread: keep it short).
    pub fn on_commit(&self, f: impl Fn(u64) + Send + Sync + 'static) {
        if let Some(inner) = &self.inner {
            inner
                .on_commit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Box::new(f));
        }
    }

    /// How many times the writer has synced the log (see `Inner::syncs`).
    pub fn syncs(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.syncs.load(Ordering::Relaxed))
    }

    /// True when the log has grown enough that the router should call [`Store::compact`].
    pub fn wants_compaction(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| {
            i.log_bytes.load(Ordering::Relaxed) >= i.compact_bytes
                && !i.compacting.swap(true, Ordering::AcqRel)
        })
    }

    /// Replaces the log with `snapshot` (the live state encoded as records). Call under
    /// the router lock, like [`Store::append`]: records already queued are superseded by
    /// the snapshot and discarded; records appended later follow it.
    pub fn compact(&self, snapshot: Vec<u8>) -> u64 {
        let Some(inner) = &self.inner else { return 0 };
        let mut p = inner.lock();
        p.buf.clear();
        p.snapshot = Some(snapshot);
        p.lsn += 1;
        let lsn = p.lsn;
        drop(p);
        inner.wake.notify_one();
        lsn
    }

    /// Flushes what is queued, stops the writer thread and waits for it, so the same
    /// directory can be opened again at once (tests restart brokers in-process).
    pub fn close(&self) {
        if let Some(inner) = &self.inner {
            inner.lock().stop = true;
            inner.wake.notify_one();
            let handle = inner
                .writer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Writer {
    inner: Arc<Inner>,
    dir: PathBuf,
    file: File,
}

impl Writer {
    fn run(mut self) {
        let mut buf = Vec::new();
        loop {
            let (snapshot, lsn, stop) = {
                let mut p = self.inner.lock();
                while p.buf.is_empty() && p.snapshot.is_none() && !p.stop {
                    p = self.inner.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                }
                // Swap rather than copy: the router keeps appending into the old
                // allocation of `buf` while this thread writes.
                std::mem::swap(&mut p.buf, &mut buf);
                (p.snapshot.take(), p.lsn, p.stop)
            };
            let result = match snapshot {
                Some(s) => self.replace(&s, &buf),
                None => self.append(&buf),
            };
            buf.clear();
            match result {
                Ok(()) => {
                    self.inner.durable.store(lsn, Ordering::Release);
                    for f in self
                        .inner
                        .on_commit
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                    {
                        f(lsn);
                    }
                }
                Err(e) => {
                    // Without a working disk the broker cannot keep its promise; better
                    // to stop loudly than to acknowledge messages it may lose.
                    tracing::error!(error = %e, dir = %self.dir.display(), "broker store write failed; exiting");
                    std::process::exit(70);
                }
            }
            if stop {
                return;
            }
        }
    }

    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file.write_all(buf)?;
        // fdatasync: the data and the file length, which is all replay needs.
        self.file.sync_data()?;
        self.inner.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner
            .log_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn replace(&mut self, snapshot: &[u8], tail: &[u8]) -> std::io::Result<()> {
        let tmp = self.dir.join(TMP);
        let mut f = File::create(&tmp)?;
        f.write_all(snapshot)?;
        f.write_all(tail)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(LOG))?;
        // The rename itself is durable only once the directory is synced.
        File::open(&self.dir)?.sync_all()?;
        self.file = OpenOptions::new().append(true).open(self.dir.join(LOG))?;
        let size = (snapshot.len() + tail.len()) as u64;
        // Growth is counted from the snapshot, so a live state larger than the threshold
        // does not trigger compaction again straight away.
        self.inner.log_bytes.store(0, Ordering::Relaxed);
        self.inner.compacting.store(false, Ordering::Release);
        tracing::info!(bytes = size, "broker log compacted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many writers waiting for durability at once share fsyncs (group commit), and
    /// everything acknowledged as durable is in the log when it is opened again.
    #[test]
    fn concurrent_appends_share_fsyncs_and_are_durable_when_reported() {
        let dir = std::env::temp_dir().join(format!("lentera-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (store, records) = Store::open(&dir, 1 << 30).unwrap();
        assert!(records.is_empty());
        // Eight writers, each waiting for its record to be durable before the next.
        let writers: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let client = format!("c{t}");
                    for seq in 0..100u64 {
                        let lsn = store.append(&Record::Ack {
                            client: &client,
                            seq,
                        });
                        while store.durable_seq() < lsn {
                            std::thread::sleep(std::time::Duration::from_micros(100));
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let syncs = store.syncs();
        // Observed ~4 records per fsync here; one per record would be 800.
        assert!(
            syncs < 600,
            "too little group commit: {syncs} fsyncs for 800 records"
        );
        store.close();
        let (store, records) = Store::open(&dir, 1 << 30).unwrap();
        assert_eq!(records.len(), 800);
        store.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
