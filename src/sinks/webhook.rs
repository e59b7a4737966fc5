//! webhook sink (to be written).
