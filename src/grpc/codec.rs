//! The protobuf codec of the generated services (`build.rs` names it): prost's, except that a
//! message that does not decode is INVALID_ARGUMENT. tonic's own codec answers INTERNAL, but a
//! request message the server cannot decode (a `text` that is not UTF-8, a truncated field) is the
//! client's mistake, not the server's. Deciding it here, where the decode error is still a typed
//! `prost::DecodeError`, spares reading tonic's message text afterwards.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// [`tonic_prost::ProstCodec`] with decode failures reported as INVALID_ARGUMENT.
#[derive(Debug, Clone, Copy)]
pub struct ClientErrorCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ClientErrorCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ClientErrorCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ClientErrorDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ClientErrorDecoder(ProstDecoder::default())
    }
}

/// Decodes with prost; a decode error is the sender's: INVALID_ARGUMENT with prost's words.
#[derive(Debug)]
pub struct ClientErrorDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for ClientErrorDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // prost's words, as tonic's codec has them ("failed to decode Protobuf message: ...").
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
