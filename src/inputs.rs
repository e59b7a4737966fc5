//! Instrument preset and account snapshot files. (to be written).
