//! The problems found in a config, collected so an operator sees all of them at once.

use std::fmt;

/// One line per problem, each starting with the key it is about.
pub(super) struct Problems(pub(super) Vec<String>);

impl Problems {
    pub(super) fn push(&mut self, key: &str, msg: impl fmt::Display) {
        self.0
            .push(super::one_printable_line(&format!("{key}: {msg}")));
    }
}
