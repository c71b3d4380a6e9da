//! The `chat.v1` contract as Rust types, confined to this crate so that
//! services see generated code only through these re-exports.

pub mod codec;
pub mod errors;
pub mod time;

/// Generated messages, clients and servers of package `chat.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("chat.v1");
}

/// The encoded `FileDescriptorSet` of every proto file (imports included),
/// fed to gRPC server reflection so tools like grpcurl can discover the API.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/chat_descriptor.bin"));

pub use prost_types::Timestamp;
