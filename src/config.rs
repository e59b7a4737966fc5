//! TOML configuration. (to be written).
