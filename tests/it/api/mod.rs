//! The HTTP API: in-process router, real TCP, the journal-backed event routes, the OpenAPI
//! document, the metrics documentation, and the API of the real binary.

mod daemon;
mod events;
mod metrics_doc;
mod openapi;
mod router;
mod tcp;
