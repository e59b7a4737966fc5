//! bybit feed adapter (to be written).
