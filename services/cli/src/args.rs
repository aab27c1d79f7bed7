//! Hand-rolled argument parsing: `WORDS... [--key value | --key=value | --flag]...`.
//!
//! clap is not in the workspace and a handful of options do not justify it (same style
//! as `lentera-loadgen`). Every option a command reads is marked as used, so
//! [`Args::finish`] rejects typos instead of silently ignoring them.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};

/// Options that take no value.
const FLAGS: &[&str] = &["json", "help"];

#[derive(Debug)]
pub struct Args {
    /// The words that are not options, in order (`devices add gh-1`).
    pub words: Vec<String>,
    opts: BTreeMap<String, String>,
    used: RefCell<BTreeSet<String>>,
}

impl Args {
    pub fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Args> {
        let mut words = Vec::new();
        let mut opts = BTreeMap::new();
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            if arg == "-h" {
                opts.insert("help".to_owned(), "true".to_owned());
                continue;
            }
            // `-` alone is a word (stdin for `--csv -` is taken as the option's value).
            let Some(key) = arg.strip_prefix("--") else {
                words.push(arg);
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
            words,
            opts,
            used: RefCell::default(),
        })
    }

    pub fn flag(&self, key: &str) -> bool {
        self.used.borrow_mut().insert(key.to_owned());
        self.opts.get(key).is_some_and(|v| v != "false")
    }

    /// The value of `--key`, if given.
    pub fn opt(&self, key: &str) -> Option<String> {
        self.used.borrow_mut().insert(key.to_owned());
        self.opts.get(key).cloned()
    }

    /// Word `i` (0 = the command), or an error naming what is missing.
    pub fn word(&self, i: usize, what: &str) -> anyhow::Result<&str> {
        self.words
            .get(i)
            .map(String::as_str)
            .with_context(|| format!("missing {what} (see --help)"))
    }

    /// Fails on options nobody read and on words beyond the first `n`.
    pub fn finish(&self, n: usize) -> anyhow::Result<()> {
        if let Some(extra) = self.words.get(n) {
            bail!("unexpected argument {extra:?} (see --help)");
        }
        let used = self.used.borrow();
        let unknown: Vec<_> = self.opts.keys().filter(|k| !used.contains(*k)).collect();
        if !unknown.is_empty() {
            bail!("unknown option(s) for this command: {unknown:?} (see --help)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Args {
        Args::parse(s.split_whitespace().map(str::to_owned)).unwrap()
    }

    #[test]
    fn words_options_and_flags() {
        let a = args("devices add gh-1 --kind lamp --name=Big --json");
        assert_eq!(a.words, ["devices", "add", "gh-1"]);
        assert_eq!(a.opt("kind").as_deref(), Some("lamp"));
        assert_eq!(a.opt("name").as_deref(), Some("Big"));
        assert!(a.flag("json"));
        assert!(a.finish(3).is_ok());
        assert!(a.finish(2).is_err());
        let a = args("devices add --csv -");
        assert_eq!(a.opt("csv").as_deref(), Some("-"));
        assert!(Args::parse(["--kind".to_owned()]).is_err());
        let a = args("devices list --colour=red");
        assert!(a.finish(2).is_err());
    }
}
