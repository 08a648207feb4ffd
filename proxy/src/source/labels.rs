//! A workload's labels in a compact form. A mesh holds thousands of endpoints and every one
//! carries its workload's labels; a `BTreeMap<String, String>` spends a 500-byte node on a
//! single label, where a sorted slice spends what the strings take.

use std::collections::BTreeMap;

/// Looks a label up by key: what balancing and metric labelling need of a label set,
/// whether the endpoint's ([`Labels`]) or this workload's own (a map from its settings).
pub trait LabelLookup {
    /// The value of label `key`, if set.
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelLookup for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// Labels sorted by key, each key once; immutable once made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    /// The value of label `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// Every label, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// How many labels there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every label of `selector` is set here to the same value (a subset's
    /// selection).
    pub fn selected_by(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(k, v)| self.get(k) == Some(v.as_str()))
    }

    /// The labels as a map (for code that takes one).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl LabelLookup for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Labels {
    /// Sorted by key; of a key given twice, the last value stays (as a map insert would).
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut pairs: Vec<(Box<str>, Box<str>)> = iter
            .into_iter()
            .map(|(k, v)| (Box::from(k.as_ref()), Box::from(v.as_ref())))
            .collect();
        // Stable: equal keys keep their order, so the last given is last of its run.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut deduped: Vec<(Box<str>, Box<str>)> = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            match deduped.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => deduped.push((k, v)),
            }
        }
        Self(deduped.into_boxed_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_found_by_key_whatever_order_they_came_in() {
        let l: Labels = [("version", "v1"), ("app", "reviews"), ("zone", "a")]
            .into_iter()
            .collect();
        assert_eq!(l.get("app"), Some("reviews"));
        assert_eq!(l.get("version"), Some("v1"));
        assert_eq!(l.get("zone"), Some("a"));
        assert_eq!(l.get("missing"), None);
        assert_eq!(l.len(), 3);
        let keys: Vec<&str> = l.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["app", "version", "zone"]);
    }

    #[test]
    fn a_key_given_twice_keeps_its_last_value_as_a_map_would() {
        let l: Labels = [("app", "a"), ("app", "b")].into_iter().collect();
        assert_eq!(l.len(), 1);
        assert_eq!(l.get("app"), Some("b"));
    }

    #[test]
    fn a_subset_selects_by_every_label_it_names() {
        let l: Labels = [("app", "reviews"), ("version", "v2")]
            .into_iter()
            .collect();
        let sel = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(l.selected_by(&sel(&[("version", "v2")])));
        assert!(l.selected_by(&sel(&[])));
        assert!(!l.selected_by(&sel(&[("version", "v1")])));
        assert!(!l.selected_by(&sel(&[("version", "v2"), ("track", "canary")])));
        assert_eq!(l.to_map(), sel(&[("app", "reviews"), ("version", "v2")]));
    }
}
