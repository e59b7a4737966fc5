//! SQLite event journal. (to be written).
