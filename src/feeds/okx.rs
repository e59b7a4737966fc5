//! okx feed adapter (to be written).
