//! Hand-rolled command-line parsing: `MODE [--key value | --key=value | --flag]...`.
//!
//! clap is not in the workspace and a dozen options do not justify a new dependency.
//! Every option a mode reads is marked as used, so [`Args::finish`] can reject typos
//! instead of silently running a different benchmark than the one asked for.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};

/// Options that take no value.
const FLAGS: &[&str] = &["json", "help"];

#[derive(Debug)]
pub struct Args {
    pub mode: Option<String>,
    opts: BTreeMap<String, String>,
    used: RefCell<BTreeSet<String>>,
}

impl Args {
    pub fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Args> {
        let mut mode = None;
        let mut opts = BTreeMap::new();
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let Some(key) = arg.strip_prefix("--") else {
                if mode.is_some() {
                    bail!("unexpected argument {arg:?}");
                }
                mode = Some(arg);
                continue;
            };
            let (key, value) = match key.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None if FLAGS.contains(&key) => (key.to_owned(), "true".to_owned()),
                None => {
                    let v = it
                        .next()
                        .with_context(|| format!("--{key} needs a value"))?;
                    (key.to_owned(), v)
                }
            };
            if opts.insert(key.clone(), value).is_some() {
                bail!("--{key} given twice");
            }
        }
        Ok(Args {
            mode,
            opts,
            used: RefCell::default(),
        })
    }

    pub fn flag(&self, key: &str) -> bool {
        self.used.borrow_mut().insert(key.to_owned());
        self.opts.get(key).is_some_and(|v| v != "false")
    }

    /// The value of `--key`, if given.
    pub fn opt<T: FromStr>(&self, key: &str) -> anyhow::Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        self.used.borrow_mut().insert(key.to_owned());
        self.opts
            .get(key)
            .map(|v| v.parse().map_err(|e| anyhow::anyhow!("--{key} {v:?}: {e}")))
            .transpose()
    }

    pub fn get<T: FromStr>(&self, key: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        Ok(self.opt(key)?.unwrap_or(default))
    }

    /// A duration such as `10s`, `500ms`, `2m`, or plain seconds.
    pub fn duration(&self, key: &str, default: Duration) -> anyhow::Result<Duration> {
        match self.opt::<String>(key)? {
            None => Ok(default),
            Some(v) => parse_duration(&v).with_context(|| format!("--{key} {v:?}")),
        }
    }

    /// Fails on any option no mode asked for (most likely a typo).
    pub fn finish(&self) -> anyhow::Result<()> {
        let used = self.used.borrow();
        let unknown: Vec<_> = self.opts.keys().filter(|k| !used.contains(*k)).collect();
        if !unknown.is_empty() {
            bail!("unknown option(s) for this mode: {unknown:?} (see --help)");
        }
        Ok(())
    }
}

pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, ""), |i| s.split_at(i));
    let n: f64 = num.parse().context("not a number")?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "m" => n * 60.0,
        _ => bail!("unknown unit {unit:?} (use ms, s or m)"),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Args {
        Args::parse(s.split_whitespace().map(str::to_owned)).unwrap()
    }

    #[test]
    fn reads_values_flags_and_durations() {
        let a = args("throughput --port=1884 --qos 1 --json --duration 500ms");
        assert_eq!(a.mode.as_deref(), Some("throughput"));
        assert_eq!(a.get("port", 1883u16).unwrap(), 1884);
        assert_eq!(a.get("qos", 0u8).unwrap(), 1);
        assert!(a.flag("json"));
        assert_eq!(
            a.duration("duration", Duration::ZERO).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(a.get("size", 64usize).unwrap(), 64);
        a.finish().unwrap();
    }

    #[test]
    fn rejects_unknown_options_and_bad_values() {
        let a = args("latency --rat 4000");
        assert!(a.finish().is_err());
        let a = args("latency --rate fast");
        assert!(a.get("rate", 1.0f64).is_err());
        assert!(Args::parse(["--qos".to_owned()]).is_err());
        assert!(parse_duration("3h").is_err());
    }
}
