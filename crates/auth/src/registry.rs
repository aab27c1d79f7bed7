//! The provisioned devices in memory, kept in step with PostgreSQL.
//!
//! A door answers every `check` from a snapshot (token hash → device) without touching
//! the database, so a reconnect storm costs one HMAC per board and a PostgreSQL outage
//! does not lock out known devices. The snapshot is refreshed by a background task:
//! - `LISTEN lentera_registry` (migration 0004 notifies the id of every added, removed,
//!   disabled, rotated or re-kinded device); notifications are gathered for 50 ms and the
//!   ids reloaded by one `WHERE id = ANY($1)` query;
//! - a full reload after every (re)connection of the listener and every `refresh_secs`,
//!   diffed against the old snapshot, so changes missed while disconnected still revoke;
//! - a miss (an unknown hash) is looked up once, rate-limited for all clients together,
//!   so a device added a moment ago is admitted before its notification arrives.
//!
//! Ids that lose their admission (token changed, disabled, removed) are broadcast on
//! [`Registry::revocations`] so the doors cut those devices' live connections.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use lentera_db::registry::{self as db, Provisioned};
use parking_lot::RwLock;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;

use crate::{AuthSettings, Kind, RateLimiter, cache, token};

/// The notification channel (migration 0004's trigger).
pub const CHANNEL: &str = "lentera_registry";
/// How long notifications are gathered before their ids are reloaded together.
const COALESCE: Duration = Duration::from_millis(50);
/// More notified ids than this in one batch: a full reload is cheaper.
const MAX_IDS_PER_BATCH: usize = 10_000;
/// A miss lookup waits no longer than this for PostgreSQL (the door is waiting).
const MISS_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// An admitted device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: String,
    pub kind: Kind,
}

/// Why a check failed. Deliberately one answer for unknown device, wrong token and
/// disabled device: a door must not tell a stranger which ids exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("unauthorized")]
    Unauthorized,
    /// No snapshot was ever loaded (no cache file, PostgreSQL down since start): the
    /// door cannot tell, and says so (503 / retry later) instead of refusing for good.
    #[error("device registry unavailable")]
    Unavailable,
}

/// The in-memory registry; cheap to clone (one `Arc`). Its background task stops when
/// the last clone is dropped.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("loaded", &self.is_loaded())
            .field("devices", &self.len())
            .finish()
    }
}

#[derive(Default)]
struct Snapshot {
    by_hash: HashMap<[u8; 32], Device>,
    by_id: HashMap<String, [u8; 32]>,
    /// Devices a miss lookup inserted, with the generation of the insertion: a full
    /// reload whose query began before that must not drop (and revoke) them.
    missed: HashMap<String, u64>,
}

impl Snapshot {
    fn from_rows(rows: impl IntoIterator<Item = (Device, [u8; 32])>) -> Self {
        let mut s = Snapshot::default();
        for (d, h) in rows {
            s.insert(d, h);
        }
        s
    }

    /// Inserts or replaces a device; true when it had another token (a revocation).
    fn insert(&mut self, d: Device, hash: [u8; 32]) -> bool {
        let mut changed = false;
        if let Some(old) = self.by_id.insert(d.id.clone(), hash)
            && old != hash
        {
            self.by_hash.remove(&old);
            changed = true;
        }
        // Two ids cannot share a hash (UNIQUE), but a stale entry might: drop its id.
        if let Some(prev) = self.by_hash.insert(hash, d.clone())
            && prev.id != d.id
        {
            self.by_id.remove(&prev.id);
        }
        changed
    }

    /// Removes a device; true when it was there.
    fn remove(&mut self, id: &str) -> bool {
        self.missed.remove(id);
        match self.by_id.remove(id) {
            Some(h) => {
                self.by_hash.remove(&h);
                true
            }
            None => false,
        }
    }

    fn rows(&self) -> Vec<(String, Kind, [u8; 32])> {
        self.by_hash
            .iter()
            .map(|(h, d)| (d.id.clone(), d.kind, *h))
            .collect()
    }
}

struct Inner {
    pool: PgPool,
    settings: AuthSettings,
    snap: RwLock<Snapshot>,
    /// Bumped (under the write lock) by every change from the background task, and by
    /// every miss insertion.
    generation: std::sync::atomic::AtomicU64,
    loaded: watch::Sender<bool>,
    revocations: broadcast::Sender<String>,
    /// Global bucket for miss lookups (one key); `None` = misses are never looked up.
    misses: Option<RateLimiter>,
    /// Wakes the background task when the last `Registry` is dropped.
    closed: Arc<Notify>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closed.notify_one();
    }
}

fn convert(row: Provisioned) -> Option<(Device, [u8; 32])> {
    let kind = match row.kind.parse::<Kind>() {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(device = ?row.id, error = %e, "registry: skipping a row");
            return None;
        }
    };
    let hash: [u8; 32] = match row.token_hash.as_slice().try_into() {
        Ok(h) => h,
        Err(_) => {
            tracing::warn!(device = ?row.id, "registry: skipping a row with a malformed hash");
            return None;
        }
    };
    Some((Device { id: row.id, kind }, hash))
}

impl Registry {
    /// Loads the cache file (if configured and present), then starts the background task
    /// that loads every provisioned device and follows changes. Call inside a tokio
    /// runtime; returns at once (see [`wait_loaded`](Self::wait_loaded)).
    pub fn start(pool: PgPool, settings: &AuthSettings) -> Registry {
        let (loaded, _) = watch::channel(false);
        let (revocations, _) = broadcast::channel(1024);
        let misses = (settings.miss_lookups_per_sec.is_finite()
            && settings.miss_lookups_per_sec > 0.0)
            .then(|| {
                RateLimiter::new(
                    settings.miss_lookups_per_sec,
                    settings.miss_lookups_per_sec.ceil().min(1e6) as u32,
                )
            });
        let inner = Arc::new(Inner {
            pool,
            settings: settings.clone(),
            snap: RwLock::new(Snapshot::default()),
            generation: Default::default(),
            loaded,
            revocations,
            misses,
            closed: Arc::new(Notify::new()),
        });
        if let Some(path) = &settings.cache_file
            && path.exists()
        {
            match cache::read(path) {
                Ok(rows) => {
                    let n = rows.len();
                    *inner.snap.write() = Snapshot::from_rows(
                        rows.into_iter()
                            .map(|(id, kind, h)| (Device { id, kind }, h)),
                    );
                    inner.loaded.send_replace(true);
                    tracing::info!(devices = n, path = %path.display(), "registry: cache file loaded");
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "registry: ignoring the cache file")
                }
            }
        }
        let closed = inner.closed.clone();
        tokio::spawn(run(Arc::downgrade(&inner), closed));
        Registry { inner }
    }

    /// Admits `device` when `token` is its current token.
    pub async fn check(&self, device: &str, token: &str) -> Result<Device, Denied> {
        let d = self.check_token(token).await?;
        if d.id == device {
            Ok(d)
        } else {
            Err(Denied::Unauthorized)
        }
    }

    /// The device whose current token is `token`.
    pub async fn check_token(&self, token: &str) -> Result<Device, Denied> {
        if !token::looks_like_token(token) {
            return Err(Denied::Unauthorized);
        }
        let hash = token::hash(token);
        if let Some(d) = self.inner.snap.read().by_hash.get(&hash) {
            return Ok(d.clone());
        }
        self.miss(hash).await
    }

    async fn miss(&self, hash: [u8; 32]) -> Result<Device, Denied> {
        let inner = &self.inner;
        let unknown = if self.is_loaded() {
            Denied::Unauthorized
        } else {
            Denied::Unavailable
        };
        let Some(limiter) = &inner.misses else {
            return Err(unknown);
        };
        if limiter.check("").is_err() {
            return Err(unknown);
        }
        let generation = inner.generation.load(std::sync::atomic::Ordering::Acquire);
        let row =
            match tokio::time::timeout(MISS_TIMEOUT, db::find_by_hash(&inner.pool, &hash)).await {
                Ok(Ok(Some(row))) => row,
                Ok(Ok(None)) => return Err(Denied::Unauthorized),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "registry: miss lookup failed");
                    return Err(unknown);
                }
                Err(_) => return Err(unknown),
            };
        let Some((device, h)) = convert(row) else {
            return Err(Denied::Unauthorized);
        };
        let mut snap = inner.snap.write();
        // Anything applied since the query began may be newer than its answer: then only
        // answer, and leave the snapshot to the background task.
        let now = inner.generation.load(std::sync::atomic::Ordering::Acquire);
        if now == generation {
            let g = inner
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
                + 1;
            snap.missed.insert(device.id.clone(), g);
            if snap.insert(device.clone(), h) {
                let _ = inner.revocations.send(device.id.clone());
            }
        }
        Ok(device)
    }

    /// Ids whose admission ended (token rotated, disabled, removed). A receiver that
    /// lags (`RecvError::Lagged`) should re-check its devices with [`knows`](Self::knows).
    pub fn revocations(&self) -> broadcast::Receiver<String> {
        self.inner.revocations.subscribe()
    }

    /// True when device `id` is currently admitted (provisioned, enabled).
    pub fn knows(&self, id: &str) -> bool {
        self.inner.snap.read().by_id.contains_key(id)
    }

    /// True once a snapshot is loaded (from PostgreSQL or the cache file): for `/readyz`.
    pub fn is_loaded(&self) -> bool {
        *self.inner.loaded.borrow()
    }

    /// Waits until [`is_loaded`](Self::is_loaded).
    pub async fn wait_loaded(&self) {
        let mut rx = self.inner.loaded.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }

    /// Devices in the snapshot (a metric).
    pub fn len(&self) -> usize {
        self.inner.snap.read().by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn bump(&self) -> u64 {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1
    }

    /// Replaces the snapshot with a full load that began at generation `started`.
    async fn apply_full(&self, rows: Vec<Provisioned>, started: u64) {
        let mut new = Snapshot::from_rows(rows.into_iter().filter_map(convert));
        let mut revoked = Vec::new();
        {
            let mut snap = self.snap.write();
            // Devices a miss found after this load's query began are newer than it.
            for (id, g) in &snap.missed {
                if *g > started
                    && !new.by_id.contains_key(id)
                    && let Some(h) = snap.by_id.get(id)
                    && let Some(d) = snap.by_hash.get(h)
                {
                    new.insert(d.clone(), *h);
                }
            }
            for (id, h) in &snap.by_id {
                if new.by_id.get(id) != Some(h) {
                    revoked.push(id.clone());
                }
            }
            *snap = new;
            self.bump();
        }
        self.loaded.send_replace(true);
        self.revoke(revoked);
        self.write_cache().await;
    }

    /// Applies a reload of `ids`: those missing from `rows` are no longer admitted.
    async fn apply_ids(&self, ids: &HashSet<String>, rows: Vec<Provisioned>) {
        let mut revoked = Vec::new();
        {
            let mut snap = self.snap.write();
            let mut found = HashSet::new();
            for (d, h) in rows.into_iter().filter_map(convert) {
                found.insert(d.id.clone());
                snap.missed.remove(&d.id);
                if snap.insert(d.clone(), h) {
                    revoked.push(d.id);
                }
            }
            for id in ids {
                if !found.contains(id) && snap.remove(id) {
                    revoked.push(id.clone());
                }
            }
            self.bump();
        }
        self.revoke(revoked);
        self.write_cache().await;
    }

    fn revoke(&self, ids: Vec<String>) {
        for id in ids {
            tracing::info!(device = ?id, "registry: device revoked");
            let _ = self.revocations.send(id);
        }
    }

    async fn write_cache(&self) {
        let Some(path) = self.settings.cache_file.clone() else {
            return;
        };
        let rows = self.snap.read().rows();
        let result = tokio::task::spawn_blocking(move || {
            let r = cache::write(&path, &rows);
            (path, r)
        })
        .await;
        if let Ok((path, Err(e))) = result {
            tracing::warn!(path = %path.display(), error = %e, "registry: cannot write the cache file");
        }
    }
}

/// The background task: (re)connect, full load, follow notifications; back off on errors.
async fn run(weak: Weak<Inner>, closed: Arc<Notify>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            r = session(&weak) => r,
            _ = closed.notified() => return,
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                if started.elapsed() > BACKOFF_MAX {
                    backoff = BACKOFF_MIN;
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "registry: PostgreSQL unreachable, keeping the last snapshot");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = closed.notified() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One listener connection's life. `Ok` only when the registry is gone.
async fn session(weak: &Weak<Inner>) -> Result<(), String> {
    let (pool, refresh) = {
        let Some(inner) = weak.upgrade() else {
            return Ok(());
        };
        (
            inner.pool.clone(),
            Duration::from_secs(inner.settings.refresh_secs.max(1)),
        )
    };
    let mut listener = PgListener::connect_with(&pool)
        .await
        .map_err(|e| format!("listen: {e}"))?;
    listener
        .listen(CHANNEL)
        .await
        .map_err(|e| format!("listen: {e}"))?;
    // Listening first, then loading: a change between the two is both loaded and notified.
    full_reload(weak, &pool).await?;
    let mut tick = tokio::time::interval_at(Instant::now() + refresh, refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            _ = tick.tick() => {
                full_reload(weak, &pool).await?;
                continue;
            }
            n = listener.try_recv() => n,
        };
        let first = first
            .map_err(|e| format!("notification: {e}"))?
            .ok_or("notification connection lost")?;
        let mut ids = HashSet::from([first.payload().to_owned()]);
        let deadline = Instant::now() + COALESCE;
        loop {
            match tokio::time::timeout_at(deadline, listener.try_recv()).await {
                Err(_) => break,
                Ok(Ok(Some(n))) => {
                    ids.insert(n.payload().to_owned());
                }
                Ok(Ok(None)) => return Err("notification connection lost".into()),
                Ok(Err(e)) => return Err(format!("notification: {e}")),
            }
        }
        if ids.len() > MAX_IDS_PER_BATCH {
            full_reload(weak, &pool).await?;
            continue;
        }
        let list: Vec<String> = ids.iter().cloned().collect();
        let rows = db::load_ids(&pool, &list)
            .await
            .map_err(|e| format!("reload: {e}"))?;
        let Some(inner) = weak.upgrade() else {
            return Ok(());
        };
        inner.apply_ids(&ids, rows).await;
    }
}

async fn full_reload(weak: &Weak<Inner>, pool: &PgPool) -> Result<(), String> {
    let started = match weak.upgrade() {
        Some(inner) => inner.generation.load(std::sync::atomic::Ordering::Acquire),
        None => return Ok(()),
    };
    let rows = db::load_all(pool).await.map_err(|e| format!("load: {e}"))?;
    let n = rows.len();
    if let Some(inner) = weak.upgrade() {
        inner.apply_full(rows, started).await;
        tracing::debug!(devices = n, "registry: loaded");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str) -> Device {
        Device {
            id: id.into(),
            kind: Kind::Sensor,
        }
    }

    #[test]
    fn snapshot_insert_replaces_the_old_hash() {
        let mut s = Snapshot::default();
        assert!(!s.insert(dev("a"), [1; 32]));
        assert!(!s.insert(dev("a"), [1; 32]));
        assert!(
            s.insert(dev("a"), [2; 32]),
            "a new token revokes the old one"
        );
        assert!(!s.by_hash.contains_key(&[1; 32]));
        assert_eq!(s.by_hash[&[2; 32]].id, "a");
        assert!(s.remove("a"));
        assert!(!s.remove("a"));
        assert!(s.by_hash.is_empty() && s.by_id.is_empty());
    }
}
