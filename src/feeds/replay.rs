//! replay feed adapter (to be written).
