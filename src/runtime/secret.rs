//! [`Secret`]: a credential read from the environment (API token, webhook HMAC key). It never
//! prints (`Debug`/`Display` name only the variable it came from) and compares in constant
//! time, so neither logs nor timing reveal it.

use std::fmt;

use subtle::ConstantTimeEq;

/// Reads the environment variable a `*_env` config key names, through `env`
/// (`|k| std::env::var(k).ok()` in the daemon). A name that is not an environment variable name
/// (letters, digits and `_`, not starting with a digit) is refused without echoing it — it is
/// most often the secret itself pasted in place of the variable's name. A blank value counts as
/// unset.
pub fn read_named_env(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<String, String> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(
            "is not an environment variable name (letters, digits and _, not starting \
             with a digit): put the name of the variable that holds the value here, not the value"
                .to_string(),
        );
    }
    match env(name) {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(format!(
            "environment variable {name} is not set (or empty): set it before starting liqwatch"
        )),
    }
}

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

    /// A `*_env` key must name a variable: a pasted value is refused without being echoed, an
    /// unset or blank variable is named, a set one is read.
    #[test]
    fn read_named_env_checks_the_name_and_never_echoes_a_bad_one() {
        let env = |k: &str| match k {
            "HOOK_SECRET" => Some("s3cret".to_string()),
            "_BLANK" => Some("  ".to_string()),
            _ => None,
        };
        assert_eq!(read_named_env(&env, "HOOK_SECRET").unwrap(), "s3cret");
        for bad in ["", "1ABC", "xoxb-1234-abcd", "MY SECRET", "A=B"] {
            let e = read_named_env(&env, bad).unwrap_err();
            assert!(
                e.starts_with("is not an environment variable name"),
                "{bad}: {e}"
            );
            assert!(bad.is_empty() || !e.contains(bad), "{bad} echoed: {e}");
        }
        let e = read_named_env(&env, "_BLANK").unwrap_err();
        assert!(e.contains("environment variable _BLANK is not set"), "{e}");
        let e = read_named_env(&env, "NOPE").unwrap_err();
        assert!(e.contains("environment variable NOPE is not set"), "{e}");
    }

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
