//! chat-gateway: the browser edge (docs/api.md#rest-api, #websocket-api). It holds no chat state:
//! every request becomes chat-core gRPC calls, so any number of replicas
//! can run.

pub mod config;
pub mod edge;
pub mod error;
pub mod json;
pub mod listener;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod rest;
pub mod startup;
pub mod upstream;
pub mod ws;
