//! `liqwatch demo` (to be written).
