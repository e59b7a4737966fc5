//! nats sink (to be written).
