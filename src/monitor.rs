//! Threshold state machine and event creation. (to be written).
