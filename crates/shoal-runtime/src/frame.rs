//! The native channel's frame format (docs/PROTOCOL.md, version 1), daemon side.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The protocol version this daemon speaks; a runtime's HELLO must name it.
pub const PROTOCOL_VERSION: u64 = 1;
/// Largest payload accepted in either direction.
pub const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

pub const HELLO: u8 = 1;
pub const INIT_ERROR: u8 = 2;
pub const INVOKE: u8 = 3;
pub const RESULT: u8 = 4;
pub const ERROR: u8 = 5;

#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub kind: u8,
    pub id: u32,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("reading from the instance channel")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
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

/// Encode any frame (used by tests acting as a runtime).
pub fn encode(kind: u8, id: u32, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(9 + payload.len());
    buf.put_u32((5 + payload.len()) as u32);
    buf.put_u8(kind);
    buf.put_u32(id);
    buf.put_slice(payload);
    buf.freeze()
}

/// Read one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; 9];
    match reader.read_exact(&mut header[..4]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
    if len < 5 {
        return Err(FrameError::TooShort(len));
    }
    let payload_len = len as usize - 5;
    if payload_len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(payload_len));
    }
    reader.read_exact(&mut header[4..9]).await?;
    let kind = header[4];
    if !(HELLO..=ERROR).contains(&kind) {
        return Err(FrameError::UnknownKind(kind));
    }
    let id = u32::from_be_bytes(header[5..9].try_into().expect("4 bytes"));
    let mut payload = BytesMut::zeroed(payload_len);
    reader.read_exact(&mut payload).await?;
    Ok(Some(Frame {
        kind,
        id,
        payload: payload.freeze(),
    }))
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
        assert!(matches!(
            read_frame(&mut &huge[..]).await,
            Err(FrameError::TooLarge(_))
        ));
        let truncated = &encode(RESULT, 1, b"abcdef")[..12];
        assert!(read_frame(&mut &truncated[..]).await.is_err());
    }
}
