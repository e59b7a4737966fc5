//! binance feed adapter (to be written).
