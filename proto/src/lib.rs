//! Wire types of the Outrider control stream, generated from `outrider/v1/*.proto`.
//!
//! Only generated code (and the codec it uses) lives here; conversion to domain types happens at the edges
//! (control plane and sidecar), validated once with `outrider-policy`.

pub mod codec;

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("outrider.v1");
}
