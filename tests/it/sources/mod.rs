//! Account sources.

mod nats;
