//! A memory of ids handled lately, for work that must not be repeated when an event comes twice
//! or a cache has not caught up with the bridge's own writes yet.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Ids remembered for a while (ten minutes by default); older ones are forgotten as new ones
/// come, so the memory stays bounded however long the bridge runs.
#[derive(Debug)]
pub struct Recent {
    keep: Duration,
    ids: Mutex<HashMap<String, Instant>>,
}

impl Default for Recent {
    /// Long past the time any late event or lagging watch takes to arrive.
    fn default() -> Self {
        Recent::new(Duration::from_secs(600))
    }
}

impl Recent {
    pub fn new(keep: Duration) -> Self {
        Recent { keep, ids: Default::default() }
    }

    pub fn insert(&self, id: &str) {
        let mut ids = self.ids.lock().expect("recent ids lock");
        // Sweep whenever the map doubles: amortised O(1) per insert.
        if ids.len() >= 1024 && ids.len().is_power_of_two() {
            ids.retain(|_, at| at.elapsed() < self.keep);
        }
        ids.insert(id.to_owned(), Instant::now());
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.lock().expect("recent ids lock").get(id).is_some_and(|at| at.elapsed() < self.keep)
    }

    pub fn remove(&self, id: &str) {
        self.ids.lock().expect("recent ids lock").remove(id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids.lock().expect("recent ids lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::Recent;

    #[test]
    fn remembers_and_forgets() {
        let recent = Recent::default();
        assert!(!recent.contains("200-0000000001"));
        recent.insert("200-0000000001");
        assert!(recent.contains("200-0000000001"));
        recent.remove("200-0000000001");
        assert!(!recent.contains("200-0000000001"));
    }

    #[test]
    fn forgets_old_ids_as_new_ones_come() {
        let recent = Recent::new(std::time::Duration::ZERO);
        for i in 0..5000 {
            recent.insert(&i.to_string());
        }
        assert!(recent.len() < 1024, "old ids are swept: {}", recent.len());
        assert!(!recent.contains("4999"), "an id older than `keep` is not remembered");

        let recent = Recent::default();
        for i in 0..5000 {
            recent.insert(&i.to_string());
        }
        assert_eq!(recent.len(), 5000);
        assert!(recent.contains("0") && recent.contains("4999"));
    }
}
