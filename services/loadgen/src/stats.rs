//! Small measurement helpers: latency percentiles, a sequence-number set for loss and
//! duplicate counting, and reading a process's resident memory from `/proc`.

use serde_json::{Value, json};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub samples: usize,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn from_samples(mut v: Vec<u64>) -> Percentiles {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_unstable();
        // Nearest-rank: the smallest sample with at least p% of samples at or below it.
        let at = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Percentiles {
            samples: v.len(),
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: v[v.len() - 1],
        }
    }

    pub fn human(&self) -> String {
        format!(
            "p50 {} p90 {} p99 {} max {} ({} samples)",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max),
            self.samples
        )
    }

    pub fn json(&self) -> Value {
        json!({"samples": self.samples, "p50_us": self.p50, "p90_us": self.p90,
               "p99_us": self.p99, "max_us": self.max})
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}ms", us as f64 / 1000.0)
}

/// Which sequence numbers of one publisher have arrived: a growable bitset.
#[derive(Debug, Default, Clone)]
pub struct SeqSet {
    words: Vec<u64>,
    pub unique: u64,
    pub duplicates: u64,
}

impl SeqSet {
    pub fn insert(&mut self, seq: u64) {
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        if self.words[w] & bit == 0 {
            self.words[w] |= bit;
            self.unique += 1;
        } else {
            self.duplicates += 1;
        }
    }

    /// How many of `0..n` are missing.
    pub fn missing_below(&self, n: u64) -> u64 {
        let full = (n / 64) as usize;
        let mut have: u64 = self
            .words
            .iter()
            .take(full)
            .map(|w| w.count_ones() as u64)
            .sum();
        if !n.is_multiple_of(64)
            && let Some(w) = self.words.get(full)
        {
            have += (w & ((1u64 << (n % 64)) - 1)).count_ones() as u64;
        }
        n - have
    }
}

/// Resident set size of `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// This process's soft limit on open files, from `/proc/self/limits` (no libc needed).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let p = Percentiles::from_samples((1..=100).rev().collect());
        assert_eq!(
            (p.p50, p.p90, p.p99, p.max, p.samples),
            (50, 90, 99, 100, 100)
        );
        assert_eq!(Percentiles::from_samples(vec![]), Percentiles::default());
        assert_eq!(Percentiles::from_samples(vec![7]).p99, 7);
    }

    #[test]
    fn seq_set_counts_missing_and_duplicates() {
        let mut s = SeqSet::default();
        for seq in [0, 1, 2, 64, 65, 2, 130] {
            s.insert(seq);
        }
        assert_eq!((s.unique, s.duplicates), (6, 1));
        assert_eq!(s.missing_below(3), 0);
        assert_eq!(s.missing_below(66), 66 - 5);
        assert_eq!(s.missing_below(200), 200 - 6);
    }

    #[test]
    fn reads_own_rss_and_fd_limit() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert!(open_files_limit().unwrap() > 0);
    }
}
