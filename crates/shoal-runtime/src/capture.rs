//! An instance's stdout or stderr cut into log lines in bounded memory.
//!
//! A function's output is hostile input: a process may print hundreds of megabytes without
//! a newline. Reading is done in fixed chunks, and a line keeps at most [`MAX_LOG_LINE`]
//! bytes; the rest of that line, up to its newline, is counted and dropped, and the record
//! says so (`… [truncated N bytes]`). What one stream holds is one chunk and one capped
//! line, whatever the process prints. This module only cuts lines; where they go (the
//! function's log, the stderr tail) is the caller's business.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest log line kept; the rest of the line is dropped (a runaway line must not eat
/// the daemon's memory or the function's log).
pub(crate) const MAX_LOG_LINE: usize = 64 * 1024;
/// Bytes read from the pipe at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Read `stream` to its end, calling `emit` with each line (without its newline and a
/// trailing `\r`), cut at [`MAX_LOG_LINE`]. A last line without a newline is emitted too.
/// A read error ends the stream like its end does: the process is going away.
pub(crate) async fn read_lines<R: AsyncRead + Unpin>(stream: R, emit: impl FnMut(&str)) {
    read_lines_with(stream, &mut LineSplitter::new(MAX_LOG_LINE), emit).await;
}

async fn read_lines_with<R: AsyncRead + Unpin>(
    mut stream: R,
    splitter: &mut LineSplitter,
    mut emit: impl FnMut(&str),
) {
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => splitter.push(&chunk[..n], &mut emit),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    splitter.finish(&mut emit);
}

/// Cuts bytes into lines, keeping at most `cap` bytes of the line in progress.
struct LineSplitter {
    cap: usize,
    /// The line so far, never more than `cap` bytes, and never allocated beyond that.
    line: Vec<u8>,
    /// Bytes of the line in progress dropped beyond the cap.
    dropped: u64,
}

impl LineSplitter {
    fn new(cap: usize) -> LineSplitter {
        LineSplitter {
            cap,
            line: Vec::new(),
            dropped: 0,
        }
    }

    fn push(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(&str)) {
        while let Some(newline) = bytes.iter().position(|b| *b == b'\n') {
            self.take(&bytes[..newline]);
            self.flush(emit);
            bytes = &bytes[newline + 1..];
        }
        self.take(bytes);
    }

    /// The stream ended: a last line without a newline is still a line.
    fn finish(&mut self, emit: &mut impl FnMut(&str)) {
        if !self.line.is_empty() || self.dropped > 0 {
            self.flush(emit);
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        let keep = bytes.len().min(self.cap - self.line.len());
        let needed = self.line.len() + keep;
        if needed > self.line.capacity() {
            // Grow by doubling as usual, but exactly up to the cap and never past it.
            let target = needed.max(self.line.capacity() * 2).min(self.cap);
            self.line.reserve_exact(target - self.line.len());
        }
        self.line.extend_from_slice(&bytes[..keep]);
        self.dropped += (bytes.len() - keep) as u64;
    }

    fn flush(&mut self, emit: &mut impl FnMut(&str)) {
        if self.dropped > 0 {
            // Cut on a character boundary: the bytes of a split character count as dropped.
            if let Err(e) = std::str::from_utf8(&self.line) {
                if e.error_len().is_none() {
                    self.dropped += (self.line.len() - e.valid_up_to()) as u64;
                    self.line.truncate(e.valid_up_to());
                }
            }
            let text = String::from_utf8_lossy(&self.line);
            emit(&format!("{text}… [truncated {} bytes]", self.dropped));
        } else {
            while self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            emit(&String::from_utf8_lossy(&self.line));
        }
        self.line.clear();
        self.dropped = 0;
    }

    /// What the line buffer has ever allocated (a `Vec` never shrinks on its own).
    #[cfg(test)]
    fn allocated(&self) -> usize {
        self.line.capacity()
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;

    /// `len` bytes of `x` with no newline, then `tail`; counts what it handed out and the
    /// largest single read it was asked for.
    struct Flood {
        left: u64,
        tail: &'static [u8],
        served: Arc<AtomicU64>,
        largest_read: Arc<AtomicUsize>,
    }

    impl AsyncRead for Flood {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.largest_read
                .fetch_max(buf.remaining(), Ordering::Relaxed);
            let n = if self.left > 0 {
                let n = (buf.remaining() as u64).min(self.left) as usize;
                buf.initialize_unfilled_to(n).fill(b'x');
                buf.advance(n);
                self.left -= n as u64;
                n
            } else {
                let n = buf.remaining().min(self.tail.len());
                buf.put_slice(&self.tail[..n]);
                self.tail = &self.tail[n..];
                n
            };
            self.served.fetch_add(n as u64, Ordering::Relaxed);
            Poll::Ready(Ok(()))
        }
    }

    async fn lines_of(input: &[u8], cap: usize) -> Vec<String> {
        let mut lines = Vec::new();
        read_lines_with(input, &mut LineSplitter::new(cap), |l| {
            lines.push(l.to_owned())
        })
        .await;
        lines
    }

    #[tokio::test]
    async fn fifty_megabytes_without_a_newline_make_one_capped_record_in_bounded_memory() {
        const FLOOD: u64 = 50 * 1024 * 1024;
        let served = Arc::new(AtomicU64::new(0));
        let largest_read = Arc::new(AtomicUsize::new(0));
        let flood = Flood {
            left: FLOOD,
            tail: b"\nafter the flood\n",
            served: served.clone(),
            largest_read: largest_read.clone(),
        };
        let mut splitter = LineSplitter::new(MAX_LOG_LINE);
        let mut lines = Vec::new();
        read_lines_with(flood, &mut splitter, |l| lines.push(l.to_owned())).await;

        assert_eq!(served.load(Ordering::Relaxed), FLOOD + 17, "read it all");
        assert!(largest_read.load(Ordering::Relaxed) <= READ_CHUNK);
        assert!(
            splitter.allocated() <= MAX_LOG_LINE,
            "the line buffer grew to {} bytes",
            splitter.allocated()
        );
        assert_eq!(lines.len(), 2, "one cut record, then the next line");
        let expected_suffix = format!("… [truncated {} bytes]", FLOOD - MAX_LOG_LINE as u64);
        let kept = lines[0]
            .strip_suffix(&expected_suffix)
            .unwrap_or_else(|| panic!("no truncation note: {:?}", &lines[0][65_000..]));
        assert_eq!(kept.len(), MAX_LOG_LINE);
        assert!(kept.bytes().all(|b| b == b'x'));
        assert_eq!(lines[1], "after the flood");
    }

    #[tokio::test]
    async fn a_flood_that_ends_without_a_newline_is_still_recorded() {
        let flood = Flood {
            left: 3 * MAX_LOG_LINE as u64 + 5,
            tail: b"",
            served: Arc::default(),
            largest_read: Arc::default(),
        };
        let mut lines = Vec::new();
        read_lines(flood, |l| lines.push(l.to_owned())).await;
        assert_eq!(lines.len(), 1);
        assert!(lines[0].ends_with(&format!("… [truncated {} bytes]", 2 * MAX_LOG_LINE + 5)));
    }

    #[tokio::test]
    async fn lines_are_split_on_newlines_and_lose_a_trailing_carriage_return() {
        assert_eq!(
            lines_of(b"one\r\ntwo\n\nthree", 64).await,
            ["one", "two", "", "three"]
        );
        assert!(lines_of(b"", 64).await.is_empty());
    }

    #[tokio::test]
    async fn a_line_exactly_at_the_cap_is_whole_and_one_byte_more_is_cut() {
        let at_cap = lines_of(b"abcdefgh\nabcdefghi\n", 8).await;
        assert_eq!(at_cap, ["abcdefgh", "abcdefgh… [truncated 1 bytes]"]);
    }

    #[tokio::test]
    async fn a_cut_never_splits_a_character() {
        // "é" is two bytes; the cap falls between them.
        let lines = lines_of("abcé and more\n".as_bytes(), 4).await;
        assert_eq!(lines, ["abc… [truncated 11 bytes]"]);
    }
}
