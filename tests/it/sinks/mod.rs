//! Sinks: the shared contract run against every sink, the delivery driver, and the webhook and
//! NATS sinks against real receivers.

mod contract;
mod driver;
mod lag;
mod nats_contract;
mod nats_jetstream;
mod nats_metrics;
mod redeliver;
mod webhook_batch;
mod webhook_contract;
mod webhook_delivery;
mod webhook_metrics;
