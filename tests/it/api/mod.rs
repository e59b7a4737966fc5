//! The HTTP API: in-process router, real TCP, connection limits and request hardening, the journal-backed event routes, the OpenAPI
//! document, the metrics documentation, and the API of the real binary.

mod daemon;
mod events;
mod hardening;
mod metrics_doc;
mod openapi;
mod page_auth;
mod page_browser;
mod page_drilldown;
mod page_routes;
mod risk;
mod risk_daemon;
mod router;
mod tcp;
