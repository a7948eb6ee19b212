//! The native channel's frame format (docs/PROTOCOL.md, version 1), daemon side.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The protocol version this daemon speaks; a runtime's HELLO must name it.
pub const PROTOCOL_VERSION: u64 = 1;
/// Largest payload a peer may announce. A frame beyond it is a protocol error: reading
/// past it would take too long to be worth keeping the instance.
pub const MAX_PAYLOAD: usize = 64 * 1024 * 1024;
/// Largest payload the daemon holds in memory: Lambda's response limit. A RESULT or
/// ERROR between this and [`MAX_PAYLOAD`] is read past ([`skip_payload`]) and fails its
/// invocation; any other frame that large is a protocol error.
pub const MAX_BUFFERED: usize = crate::MAX_RESPONSE_BYTES;

pub const HELLO: u8 = 1;
pub const INIT_ERROR: u8 = 2;
pub const INVOKE: u8 = 3;
pub const RESULT: u8 = 4;
pub const ERROR: u8 = 5;
/// INVOKE carrying the caller's client context; daemon → runtime, only to a runtime whose
/// HELLO lists the `client_context` feature.
pub const INVOKE_CTX: u8 = 6;
/// A warm-pool runtime's function: its environment as a JSON object; daemon → runtime,
/// once, before anything else, only to a runtime whose HELLO said `pooled`.
pub const ASSIGN: u8 = 7;

#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub kind: u8,
    pub id: u32,
    pub payload: Bytes,
}

/// What comes before a frame's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub id: u32,
    pub payload_len: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("reading from the instance channel")]
    Io(#[from] std::io::Error),
    #[error(
        "frame of kind {} announces {} bytes of payload, more than the channel allows ({limit})",
        .header.kind, .header.payload_len
    )]
    TooLarge { header: Header, limit: usize },
    #[error("frame length {0} is shorter than a frame header")]
    TooShort(u32),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
}

/// Encode an INVOKE frame: deadline, request id, then the event bytes.
pub fn encode_invoke(id: u32, deadline_epoch_ms: u64, request_id: &str, event: &[u8]) -> Bytes {
    let rid = request_id.as_bytes();
    let rid_len = rid.len().min(u16::MAX as usize);
    let payload_len = 8 + 2 + rid_len + event.len();
    let mut buf = BytesMut::with_capacity(4 + 5 + payload_len);
    buf.put_u32((5 + payload_len) as u32);
    buf.put_u8(INVOKE);
    buf.put_u32(id);
    buf.put_u64(deadline_epoch_ms);
    buf.put_u16(rid_len as u16);
    buf.put_slice(&rid[..rid_len]);
    buf.put_slice(event);
    buf.freeze()
}

/// Encode an INVOKE_CTX frame: INVOKE with the caller's client context (JSON) between
/// the request id and the event. Only for runtimes whose HELLO lists `client_context`.
pub fn encode_invoke_ctx(
    id: u32,
    deadline_epoch_ms: u64,
    request_id: &str,
    client_context: &[u8],
    event: &[u8],
) -> Bytes {
    let rid = request_id.as_bytes();
    let rid_len = rid.len().min(u16::MAX as usize);
    let payload_len = 8 + 2 + rid_len + 4 + client_context.len() + event.len();
    let mut buf = BytesMut::with_capacity(4 + 5 + payload_len);
    buf.put_u32((5 + payload_len) as u32);
    buf.put_u8(INVOKE_CTX);
    buf.put_u32(id);
    buf.put_u64(deadline_epoch_ms);
    buf.put_u16(rid_len as u16);
    buf.put_slice(&rid[..rid_len]);
    buf.put_u32(client_context.len() as u32);
    buf.put_slice(client_context);
    buf.put_slice(event);
    buf.freeze()
}

/// Encode any frame (used by tests acting as a runtime).
pub fn encode(kind: u8, id: u32, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(9 + payload.len());
    buf.put_u32((5 + payload.len()) as u32);
    buf.put_u8(kind);
    buf.put_u32(id);
    buf.put_slice(payload);
    buf.freeze()
}

/// Read one frame; `Ok(None)` at a clean end of stream. A payload larger than
/// [`MAX_BUFFERED`] is refused before anything is allocated for it.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Frame>, FrameError> {
    match read_header(reader).await? {
        Some(header) => read_payload(reader, header).await.map(Some),
        None => Ok(None),
    }
}

/// Read a frame's length, kind and id; `Ok(None)` at a clean end of stream. The payload
/// is still to be read ([`read_payload`]) or skipped ([`skip_payload`]).
pub async fn read_header<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Header>, FrameError> {
    let mut bytes = [0u8; 9];
    match reader.read_exact(&mut bytes[..4]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"));
    if len < 5 {
        return Err(FrameError::TooShort(len));
    }
    reader.read_exact(&mut bytes[4..9]).await?;
    let kind = bytes[4];
    if !(HELLO..=ERROR).contains(&kind) {
        return Err(FrameError::UnknownKind(kind));
    }
    let header = Header {
        kind,
        id: u32::from_be_bytes(bytes[5..9].try_into().expect("4 bytes")),
        payload_len: len as usize - 5,
    };
    if header.payload_len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge {
            header,
            limit: MAX_PAYLOAD,
        });
    }
    Ok(Some(header))
}

/// Read the payload `header` announced, if it is no larger than [`MAX_BUFFERED`].
pub async fn read_payload<R: AsyncRead + Unpin>(
    reader: &mut R,
    header: Header,
) -> Result<Frame, FrameError> {
    if header.payload_len > MAX_BUFFERED {
        return Err(FrameError::TooLarge {
            header,
            limit: MAX_BUFFERED,
        });
    }
    let mut payload = BytesMut::zeroed(header.payload_len);
    reader.read_exact(&mut payload).await?;
    Ok(Frame {
        kind: header.kind,
        id: header.id,
        payload: payload.freeze(),
    })
}

/// Read past a payload without keeping it (memory: one small copy buffer).
pub async fn skip_payload<R: AsyncRead + Unpin>(
    reader: &mut R,
    header: Header,
) -> Result<(), FrameError> {
    let len = header.payload_len as u64;
    let skipped = tokio::io::copy(&mut reader.take(len), &mut tokio::io::sink()).await?;
    if skipped < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(())
}

/// Split an INVOKE payload back into (deadline, request id, event); tests use it.
pub fn decode_invoke(payload: &[u8]) -> Option<(u64, &str, &[u8])> {
    let deadline = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let rid_len = u16::from_be_bytes(payload.get(8..10)?.try_into().ok()?) as usize;
    let rid = std::str::from_utf8(payload.get(10..10 + rid_len)?).ok()?;
    Some((deadline, rid, &payload[10 + rid_len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn invoke_round_trips_through_the_reader() {
        let frame = encode_invoke(7, 1_700_000_000_123, "req-1", br#"{"a":1}"#);
        let mut two = frame.to_vec();
        two.extend_from_slice(&encode(RESULT, 7, b"null"));
        let mut reader = &two[..];
        let first = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!((first.kind, first.id), (INVOKE, 7));
        let (deadline, rid, event) = decode_invoke(&first.payload).unwrap();
        assert_eq!(
            (deadline, rid, event),
            (1_700_000_000_123, "req-1", &br#"{"a":1}"#[..])
        );
        let second = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!(
            (second.kind, second.id, &second.payload[..]),
            (RESULT, 7, &b"null"[..])
        );
        assert!(read_frame(&mut reader).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn malformed_frames_are_errors() {
        let mut short = &[0u8, 0, 0, 2, 1, 0][..];
        assert!(matches!(
            read_frame(&mut short).await,
            Err(FrameError::TooShort(2))
        ));
        let unknown = encode(9, 1, b"");
        assert!(matches!(
            read_frame(&mut &unknown[..]).await,
            Err(FrameError::UnknownKind(9))
        ));
        let mut huge = Vec::new();
        huge.extend_from_slice(&(u32::MAX).to_be_bytes());
        huge.extend_from_slice(&[RESULT, 0, 0, 0, 7]);
        assert!(matches!(
            read_frame(&mut &huge[..]).await,
            Err(FrameError::TooLarge {
                header: Header {
                    kind: RESULT,
                    id: 7,
                    ..
                },
                limit: MAX_PAYLOAD
            })
        ));
        let truncated = &encode(RESULT, 1, b"abcdef")[..12];
        assert!(read_frame(&mut &truncated[..]).await.is_err());
    }

    /// Only the header of a frame: what a runtime announcing a payload it never sends, or
    /// one the daemon must not buffer, puts on the wire first.
    fn header_only(kind: u8, id: u32, payload_len: usize) -> Vec<u8> {
        let mut bytes = ((payload_len + 5) as u32).to_be_bytes().to_vec();
        bytes.push(kind);
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes
    }

    #[tokio::test]
    async fn a_payload_beyond_the_buffer_limit_is_refused_before_it_is_read() {
        // The header alone: were the payload allocated or awaited, this would not return
        // TooLarge (the reader holds no payload bytes at all).
        let bytes = header_only(RESULT, 3, MAX_BUFFERED + 1);
        let mut reader = &bytes[..];
        match read_frame(&mut reader).await {
            Err(FrameError::TooLarge { header, limit }) => {
                assert_eq!(
                    (header.kind, header.id, header.payload_len, limit),
                    (RESULT, 3, MAX_BUFFERED + 1, MAX_BUFFERED)
                );
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_skipped_payload_leaves_the_next_frame_readable() {
        let big = vec![b'x'; MAX_BUFFERED + 10];
        let mut stream = encode(RESULT, 1, &big).to_vec();
        stream.extend_from_slice(&encode(RESULT, 2, b"\"small\""));
        let mut reader = &stream[..];
        let header = read_header(&mut reader).await.unwrap().unwrap();
        assert_eq!((header.id, header.payload_len), (1, MAX_BUFFERED + 10));
        skip_payload(&mut reader, header).await.unwrap();
        let next = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!((next.id, &next.payload[..]), (2, &b"\"small\""[..]));
    }

    #[tokio::test]
    async fn a_payload_cut_short_while_skipping_is_an_error() {
        let mut bytes = header_only(ERROR, 4, MAX_BUFFERED + 100);
        bytes.extend_from_slice(&[0; 50]);
        let mut reader = &bytes[..];
        let header = read_header(&mut reader).await.unwrap().unwrap();
        assert!(matches!(
            skip_payload(&mut reader, header).await,
            Err(FrameError::Io(_))
        ));
    }
}
