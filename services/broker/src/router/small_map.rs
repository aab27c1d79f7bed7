//! A map for the subscription index's nodes, almost all of which hold one entry (a
//! board's own topic level, its one subscriber): a short vector searched in place until
//! it outgrows [`FEW`] entries, then a hash map. A one-entry hash map still allocates four
//! buckets and control bytes beside the hasher's keys; a one-entry vector costs the entry.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// Entries kept in a vector; the next one moves them into a hash map.
const FEW: usize = 8;

pub(super) enum SmallMap<K, V> {
    Few(Vec<(K, V)>),
    // Boxed so the common case stays the size of a vector (a `HashMap` with its hasher
    // is twice that, in every node).
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<K, V>>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap::Few(Vec::new())
    }
}

impl<K: Hash + Eq, V> SmallMap<K, V> {
    pub fn is_empty(&self) -> bool {
        match self {
            SmallMap::Few(v) => v.is_empty(),
            SmallMap::Many(m) => m.is_empty(),
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            SmallMap::Few(v) => v.iter().find(|(k, _)| k.borrow() == key).map(|(_, v)| v),
            SmallMap::Many(m) => m.get(key),
        }
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            SmallMap::Few(v) => v
                .iter_mut()
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, v)| v),
            SmallMap::Many(m) => m.get_mut(key),
        }
    }

    /// The value for `key`, inserted from `make` if absent.
    pub fn get_or_insert_with<Q>(&mut self, key: &Q, make: impl FnOnce() -> V) -> &mut V
    where
        K: Borrow<Q> + for<'a> From<&'a Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let SmallMap::Few(v) = self
            && v.len() >= FEW
            && !v.iter().any(|(k, _)| k.borrow() == key)
        {
            let m: HashMap<K, V> = std::mem::take(v).into_iter().collect();
            *self = SmallMap::Many(Box::new(m));
        }
        match self {
            SmallMap::Few(v) => {
                let i = match v.iter().position(|(k, _)| k.borrow() == key) {
                    Some(i) => i,
                    None => {
                        // Exactly one more: most nodes never get a second entry.
                        v.reserve_exact(1);
                        v.push((K::from(key), make()));
                        v.len() - 1
                    }
                };
                &mut v[i].1
            }
            SmallMap::Many(m) => m.entry(K::from(key)).or_insert_with(make),
        }
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            SmallMap::Few(v) => {
                let i = v.iter().position(|(k, _)| k.borrow() == key)?;
                let (_, value) = v.swap_remove(i);
                if v.is_empty() {
                    // A node that emptied gives its memory back (pruned nodes go anyway).
                    *v = Vec::new();
                }
                Some(value)
            }
            SmallMap::Many(m) => m.remove(key),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let (few, many) = match self {
            SmallMap::Few(v) => (Some(v.iter().map(|(k, v)| (k, v))), None),
            SmallMap::Many(m) => (None, Some(m.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map_across_the_switch() {
        let mut m: SmallMap<Box<str>, u32> = SmallMap::default();
        let mut reference = HashMap::new();
        for round in 0..3u32 {
            for i in 0..20u32 {
                let k = format!("k{}", (i * 7 + round) % 13);
                *m.get_or_insert_with(k.as_str(), || 0) += i;
                *reference.entry(k.clone()).or_insert(0) += i;
                if i % 5 == 0 {
                    assert_eq!(m.remove(k.as_str()), reference.remove(&k));
                }
            }
        }
        let mut got: Vec<(String, u32)> = m.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let mut want: Vec<(String, u32)> = reference.into_iter().collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        assert!(matches!(m, SmallMap::Many(_)), "outgrew the vector");
        assert_eq!(m.get("nope"), None);
    }
}
