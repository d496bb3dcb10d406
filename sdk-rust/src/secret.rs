//! A string that never shows in `Debug` output and is wiped from memory when dropped.

use std::fmt;

use zeroize::Zeroize;

/// A secret string (the API key). `Debug` prints `***`.
#[derive(Clone)]
pub(crate) struct SecretString(String);

impl SecretString {
    pub(crate) fn new(s: String) -> Self {
        Self(s)
    }

    /// The secret itself. Never log it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}
