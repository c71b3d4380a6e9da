//! chat-core: the gRPC service that owns all chat state (docs/architecture.md#parts).
//!
//! Layers, outermost first: [`startup`] wires configuration, storage and
//! servers; [`grpc`] and [`http`] are the transports; [`chat`] holds the
//! rules; [`store`] is the only code that speaks SQL.

pub mod bus;
pub mod calls;
pub mod caps;
pub mod chat;
pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod guard;
pub mod http;
pub mod hub;
pub mod integrations;
pub mod listener;
pub mod live;
pub mod metrics;
pub mod presence;
pub mod relay;
pub mod search;
pub mod startup;
pub mod store;
pub mod transcript;
pub mod wire;
pub mod writer;
