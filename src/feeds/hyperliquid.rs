//! hyperliquid feed adapter (to be written).
