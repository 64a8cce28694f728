//! Which launch tokens this process knows no create was ever sent with.
//!
//! A create is idempotent per attempt token: before it asks for an instance, a driver looks for
//! one an earlier try with the same token made (a launch resumed after a crash, a step repeated
//! after a refused status write). That look is a cloud call (AWS: a `DescribeInstances`), and
//! most launches never need it: a node this process created itself, whose attempt it has not
//! sent yet, can have no earlier instance. Any other process (a restarted operator, a new
//! leader) knows of no node it created, so it looks, as before.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

/// Nodes this process created, by name, with the tokens it has sent creates with.
#[derive(Default)]
pub struct Launches(Mutex<HashMap<String, HashSet<String>>>);

impl Launches {
    /// The scheduler of this process created node `name`.
    pub fn created(&self, name: &str) {
        self.0.lock().expect("launches lock").entry(name.to_owned()).or_default();
    }

    /// A create with `token` for node `name` is about to be sent: whether it is the first ever
    /// (the node is this process's and the token was not sent before). Either way the token
    /// counts as sent from now on.
    pub fn first_send(&self, name: &str, token: &str) -> bool {
        let mut launches = self.0.lock().expect("launches lock");
        launches.get_mut(name).is_some_and(|sent| sent.insert(token.to_owned()))
    }

    /// The node's launch is over (or the node gone): no more creates for it.
    pub fn finished(&self, name: &str) {
        self.0.lock().expect("launches lock").remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_send_of_a_node_created_here_skips_the_look() {
        let launches = Launches::default();
        assert!(!launches.first_send("elsewhere", "elsewhere-a1"), "a node another process created");
        launches.created("n");
        assert!(launches.first_send("n", "n-a1"));
        assert!(!launches.first_send("n", "n-a1"), "a repeated step may have reached the cloud");
        assert!(launches.first_send("n", "n-a2"), "the next attempt's token");
        launches.finished("n");
        assert!(!launches.first_send("n", "n-a3"), "forgotten once the launch is over");
    }
}
