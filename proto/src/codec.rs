//! The codec of every generated client and server: prost, with smaller first buffers.
//!
//! tonic gives each stream an encode and a decode buffer of 8 KiB up front. A control
//! plane holds one stream per sidecar, and almost every message on it (health reports,
//! ACKs, deltas) is far below 1 KiB, so at 10,000 sidecars those buffers alone were
//! 160 MiB. They start at 1 KiB here and grow as a larger message (a snapshot) needs.

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// First capacity of a stream's encode and decode buffers.
const BUFFER_SIZE: usize = 1024;
/// tonic's own default: how much encoded data a stream gathers before it is sent.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Named in `build.rs` (`codec_path`); constructed by the generated code.
#[derive(Debug, Clone, Copy)]
pub struct StreamCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for StreamCodec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T, U> Codec for StreamCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}
