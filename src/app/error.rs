//! [`AppError`]: why a command stopped, and the documented exit code that goes with it.

use crate::config::ConfigError;

/// Why the daemon stopped with an error, and the exit code that goes with it.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad configuration (exit 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A startup input is unusable: instrument or account file, corrupt journal, bind address
    /// (exit 2).
    #[error("startup: {0}")]
    Startup(String),
    /// A failure while running (exit 1).
    #[error("runtime failure: {0}")]
    Runtime(String),
}

impl AppError {
    /// The process exit code: 2 for config/startup problems a person must fix, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Config(_) | AppError::Startup(_) => 2,
            AppError::Runtime(_) => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exit codes follow the documented table.
    #[test]
    fn exit_codes() {
        assert_eq!(AppError::Startup("x".into()).exit_code(), 2);
        assert_eq!(AppError::Runtime("x".into()).exit_code(), 1);
    }
}
