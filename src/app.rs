//! Wiring: spawn, channels, supervision, shutdown order. (to be written).
