//! deribit feed adapter (to be written).
