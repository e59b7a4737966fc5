//! The event journal: durability across a crash.

mod crash;
