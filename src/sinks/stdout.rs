//! stdout sink (to be written).
