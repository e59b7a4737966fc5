//! Account sources (to be written).
