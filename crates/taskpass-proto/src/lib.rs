//! Generated gRPC types and service stubs for the `taskpass.v1` API.
//!
//! The `.proto` files live in `proto/taskpass/v1/` at the top of the repository and are compiled
//! at build time by `protox`, so a fresh checkout builds with cargo alone.
//!
//! ```
//! use taskpass_proto::v1::{Attestation, attestation::Method};
//! let a = Attestation { method: Some(Method::OidcToken("eyJ...".into())) };
//! assert!(a.method.is_some());
//! ```

/// The `taskpass.v1` package.
#[allow(missing_debug_implementations, clippy::all, reason = "generated code")]
pub mod v1 {
    tonic::include_proto!("taskpass.v1");
}

/// The encoded `FileDescriptorSet` of every `taskpass.v1` file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/taskpass_descriptor.bin"));
