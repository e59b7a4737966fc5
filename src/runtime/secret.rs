//! [`Secret`]: a credential read from the environment (API token, webhook HMAC key). It never
//! prints (`Debug`/`Display` name only the variable it came from) and compares in constant
//! time, so neither logs nor timing reveal it.

use std::fmt;

use subtle::ConstantTimeEq;

/// A secret value. `Debug`/`Display` show the environment variable it came from, never the
/// value; `==` compares the values in constant time (the variable name is not compared).
#[derive(Clone)]
pub struct Secret {
    env: Option<String>,
    value: String,
}

impl Secret {
    /// A secret that did not come from a named variable (tests, embedding).
    pub fn new(value: impl Into<String>) -> Self {
        Secret {
            env: None,
            value: value.into(),
        }
    }

    /// A secret read from environment variable `env`.
    pub fn from_env(env: impl Into<String>, value: impl Into<String>) -> Self {
        Secret {
            env: Some(env.into()),
            value: value.into(),
        }
    }

    /// The secret value. Never log it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// The secret value as bytes (an HMAC key). Never log it.
    pub fn expose_bytes(&self) -> &[u8] {
        self.value.as_bytes()
    }

    /// The environment variable it came from, if any.
    pub fn env_name(&self) -> Option<&str> {
        self.env.as_deref()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose_bytes().ct_eq(other.expose_bytes()).into()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.env {
            Some(env) => write!(f, "Secret(${env}, redacted)"),
            None => f.write_str("Secret(<redacted>)"),
        }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.env {
            Some(env) => write!(f, "${env} (redacted)"),
            None => f.write_str("(redacted)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Neither Debug nor Display shows the value; equality is by value only.
    #[test]
    fn redacted_and_compared_by_value() {
        let s = Secret::from_env("HOOK_SECRET", "s3cret-value");
        for shown in [format!("{s:?}"), format!("{s}"), format!("{:?}", Some(&s))] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("HOOK_SECRET"), "{shown}");
        }
        assert_eq!(format!("{:?}", Secret::new("x")), "Secret(<redacted>)");
        assert_eq!(s, Secret::new("s3cret-value"));
        assert_ne!(s, Secret::new("s3cret-valuE"));
        assert_ne!(s, Secret::new("s3cret"));
        assert_eq!(s.expose(), "s3cret-value");
        assert_eq!(s.env_name(), Some("HOOK_SECRET"));
    }
}
