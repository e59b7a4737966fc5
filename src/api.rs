//! HTTP API (axum). (to be written).
