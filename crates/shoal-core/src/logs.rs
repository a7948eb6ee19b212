//! Function logs: every line an instance prints, tagged with instance and request id,
//! appended as JSON lines to `logs/<function>.log` in the data directory. Platform
//! messages about a call (why it failed) go to the same log. What a function prints can
//! hold its secrets, so the folder is 0700 and each file 0600, put right at start too.
//!
//! What a function prints is hostile input, so a log has a cap: once `<function>.log`
//! would pass it, it becomes `<function>.log.1` (replacing the previous one) and a new
//! file starts; a function holds at most two files of about the cap each on disk. Readers
//! see one stream: offsets (`since`, `next`) count every byte ever written to the
//! function's log, so a follower's offset stays valid across a rotation. The offset where
//! the current file starts is kept next to it in `<function>.log.base`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use shoal_api::LogRecord;
use shoal_runtime::{LogSink, LogStream};

/// A function's log is rotated once it would grow past this many bytes (`shoal serve
/// --max-log-mib`).
pub const DEFAULT_MAX_LOG_BYTES: u64 = 32 * 1024 * 1024;
/// The most bytes of log one read returns; a follower reads the rest on its next call.
/// It bounds what a page costs the daemon however much a function has printed.
const PAGE_BYTES: u64 = 4 * 1024 * 1024;
/// How far back a read without `since` looks for its last `tail` records.
const TAIL_WINDOW: u64 = 1024 * 1024;
/// Records are gathered per function and written together once this many bytes wait, at
/// the latest after [`FLUSH_EVERY`], and before any read: one `write` per many calls
/// instead of two per call (`START`, then `END` + `REPORT`). A `kill -9` of the daemon
/// loses at most that last moment of log lines, never anything a read already returned.
const FLUSH_BYTES: usize = 64 * 1024;
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

pub(crate) struct LogStore {
    dir: PathBuf,
    /// Bytes a function's current log file may hold before it is rotated: what bounds
    /// the disk a function's output can take (about twice this).
    max_bytes: u64,
    files: Mutex<HashMap<String, Open>>,
}

/// A function's current log file, open for appending.
struct Open {
    file: File,
    /// Its length, counting the records still waiting in `pending`: what rotation is
    /// decided on.
    len: u64,
    /// The stream offset of its first byte.
    base: u64,
    /// Records not yet written (see [`FLUSH_BYTES`]).
    pending: Vec<u8>,
}

impl Open {
    /// Write what waits. A failed write is logged; whatever part reached the file counts,
    /// so offsets stay true.
    fn flush(&mut self, function: &str) {
        if self.pending.is_empty() {
            return;
        }
        if let Err(e) = self.file.write_all(&self.pending) {
            tracing::warn!(function, error = %e, "cannot write log file");
            if let Ok(meta) = self.file.metadata() {
                self.len = meta.len();
            }
        }
        self.pending.clear();
    }
}

impl LogStore {
    pub fn new(dir: PathBuf, max_bytes: u64) -> std::io::Result<LogStore> {
        crate::datadir::private_folder(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                crate::datadir::private_file(&entry.path())?;
            }
        }
        Ok(LogStore {
            dir,
            max_bytes,
            files: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn path(&self, function: &str) -> PathBuf {
        self.dir.join(format!("{function}.log"))
    }

    fn rotated_path(&self, function: &str) -> PathBuf {
        self.dir.join(format!("{function}.log.1"))
    }

    fn base_path(&self, function: &str) -> PathBuf {
        self.dir.join(format!("{function}.log.base"))
    }

    /// The stream offset where the current file starts (0 before the first rotation). It
    /// is at least the rotated file's length, even if the daemon died between rotating
    /// and recording the base, so the two files never overlap in the stream.
    fn stored_base(&self, function: &str) -> u64 {
        let recorded = std::fs::read_to_string(self.base_path(function))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        let rotated = std::fs::metadata(self.rotated_path(function)).map_or(0, |m| m.len());
        recorded.max(rotated)
    }

    fn open(&self, function: &str) -> std::io::Result<Open> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(crate::datadir::PRIVATE_FILE)
            .open(self.path(function))?;
        let len = file.metadata()?.len();
        Ok(Open {
            file,
            len,
            base: self.stored_base(function),
            pending: Vec::new(),
        })
    }

    pub fn append(&self, function: &str, record: &LogRecord) {
        self.append_all(function, std::slice::from_ref(record));
    }

    /// Several records in one write.
    pub fn append_all(&self, function: &str, records: &[LogRecord]) {
        let mut line = Vec::new();
        for record in records {
            write_record(
                &mut line,
                &Fields {
                    ts: record.ts,
                    instance: &record.instance,
                    request_id: record.request_id.as_deref(),
                    stream: &record.stream,
                    level: record.level.as_deref(),
                    message: &record.message,
                },
            );
        }
        self.append_lines(function, line);
    }

    /// Whole JSON lines, written together.
    fn append_lines(&self, function: &str, line: Vec<u8>) {
        if line.is_empty() {
            return;
        }
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if !files.contains_key(function) {
            match self.open(function) {
                Ok(open) => {
                    files.insert(function.to_owned(), open);
                }
                Err(e) => {
                    tracing::warn!(function, error = %e, "cannot open log file");
                    return;
                }
            }
        }
        let Some(open) = files.get_mut(function) else {
            return;
        };
        // A record larger than the cap still gets a file of its own rather than being lost.
        if open.len > 0 && open.len + line.len() as u64 > self.max_bytes {
            open.flush(function);
            match self.rotate(function, open) {
                Ok(fresh) => *open = fresh,
                Err(e) => {
                    // Dropping the record keeps the cap; the daemon's log says why.
                    tracing::warn!(function, error = %e, "cannot rotate log file; record dropped");
                    return;
                }
            }
        }
        open.len += line.len() as u64;
        if open.pending.is_empty() && line.len() >= FLUSH_BYTES {
            open.pending = line;
        } else {
            open.pending.extend_from_slice(&line);
        }
        if open.pending.len() >= FLUSH_BYTES {
            open.flush(function);
        }
    }

    /// Write every function's waiting records.
    pub(crate) fn flush_all(&self) {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        for (function, open) in files.iter_mut() {
            open.flush(function);
        }
    }

    /// Flush every [`FLUSH_EVERY`] on a thread of its own, for as long as the store lives.
    pub(crate) fn start_flusher(self: &std::sync::Arc<Self>) {
        let store = std::sync::Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("shoal-log-flush".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                match store.upgrade() {
                    Some(store) => store.flush_all(),
                    None => return,
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no log flusher thread: log lines wait for the next read or 64 KiB");
        }
    }

    /// `<function>.log` becomes `<function>.log.1` and a new file starts where the old
    /// one ended in the stream. Called with the files lock held.
    fn rotate(&self, function: &str, old: &Open) -> std::io::Result<Open> {
        let base = old.base + old.len;
        match std::fs::rename(self.path(function), self.rotated_path(function)) {
            // Someone removed the file under us: there is nothing to keep.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
        let staged = self.dir.join(format!("{function}.log.base.tmp"));
        std::fs::write(&staged, base.to_string())?;
        crate::datadir::private_file(&staged)?;
        std::fs::rename(&staged, self.base_path(function))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(crate::datadir::PRIVATE_FILE)
            .open(self.path(function))?;
        let len = file.metadata()?.len();
        Ok(Open {
            file,
            len,
            base,
            pending: Vec::new(),
        })
    }

    /// A platform message about one invocation (e.g. why it failed), in the same log.
    pub fn system(&self, function: &str, instance: &str, request_id: &str, message: String) {
        self.platform(function, instance, Some(request_id), message);
    }

    /// Lambda's `START`, `END` and `REPORT` lines (stream `platform`, no level), in one
    /// write: a call's own lines are never split by another's. Written straight into
    /// their JSON lines: this runs twice for every call.
    pub fn lifecycle(&self, function: &str, instance: &str, request_id: &str, messages: &[&str]) {
        let ts = now_ms();
        let size: usize = messages
            .iter()
            .map(|m| m.len() + 160 + instance.len() + request_id.len())
            .sum();
        let mut line = Vec::with_capacity(size);
        for message in messages {
            write_record(
                &mut line,
                &Fields {
                    ts,
                    instance,
                    request_id: Some(request_id),
                    stream: "platform",
                    level: None,
                    message,
                },
            );
        }
        self.append_lines(function, line);
    }

    /// Every record still on disk for `function` whose line contains `needle`, oldest
    /// first, passed to `each` one at a time (nothing is collected: a log may hold tens
    /// of MiB). Lines without the needle are not parsed.
    pub fn scan(
        &self,
        function: &str,
        needle: &str,
        mut each: impl FnMut(LogRecord),
    ) -> std::io::Result<()> {
        let segments = self.segments(function)?;
        for segment in segments {
            let mut reader = BufReader::new((&segment.file).take(segment.len));
            let mut line = Vec::new();
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                if !contains(&line, needle.as_bytes()) {
                    continue;
                }
                if let Ok(record) = serde_json::from_slice::<LogRecord>(&line) {
                    each(record);
                }
            }
        }
        Ok(())
    }

    /// A platform record (stream `platform`, level ERROR) in `function`'s log.
    fn platform(&self, function: &str, instance: &str, request_id: Option<&str>, message: String) {
        self.append(
            function,
            &LogRecord {
                ts: now_ms(),
                instance: instance.to_owned(),
                request_id: request_id.map(str::to_owned),
                stream: "platform".into(),
                level: Some("ERROR".into()),
                message,
            },
        );
    }

    /// Records from stream offset `since` (or the last `tail` records when `None`), and
    /// the offset to continue from. At most [`PAGE_BYTES`] are read per call.
    ///
    /// An offset older than what is still on disk starts at the oldest record kept; one
    /// beyond the end (the log was removed and started again) starts at the beginning.
    pub fn read(
        &self,
        function: &str,
        since: Option<u64>,
        tail: usize,
    ) -> std::io::Result<(Vec<LogRecord>, u64)> {
        let mut segments = self.segments(function)?;
        let Some(first) = segments.first() else {
            return Ok((Vec::new(), 0));
        };
        let oldest = first.start;
        let end = segments.last().map_or(oldest, |s| s.start + s.len);
        let (start, limit) = match since {
            Some(offset) if offset > end => (oldest, PAGE_BYTES),
            Some(offset) => (offset.max(oldest), PAGE_BYTES),
            // Good enough for a tail: look at the last stretch only.
            None => (end.saturating_sub(TAIL_WINDOW).max(oldest), TAIL_WINDOW),
        };
        let (mut records, next) = read_records(&mut segments, start, limit)?;
        if since.is_none() && records.len() > tail {
            records.drain(..records.len() - tail);
        }
        Ok((records, next))
    }

    /// The rotated file and the current one, oldest first, each with its place in the
    /// stream. Taken under the files lock, so a rotation cannot fall between looking at
    /// the two files and at the base.
    fn segments(&self, function: &str) -> std::io::Result<Vec<Segment>> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let base = match files.get_mut(function) {
            Some(open) => {
                open.flush(function);
                open.base
            }
            None => self.stored_base(function),
        };
        let mut segments = Vec::new();
        if let Some((file, len)) = open_existing(&self.rotated_path(function))? {
            segments.push(Segment {
                file,
                start: base.saturating_sub(len),
                len,
            });
        }
        if let Some((file, len)) = open_existing(&self.path(function))? {
            segments.push(Segment {
                file,
                start: base,
                len,
            });
        }
        Ok(segments)
    }

    pub fn remove(&self, function: &str) {
        // Pending records go with the file.
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files.remove(function);
        for path in [
            self.path(function),
            self.rotated_path(function),
            self.base_path(function),
        ] {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        self.flush_all();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// One log file as a stretch of the function's log stream.
struct Segment {
    file: File,
    /// The stream offset of its first byte.
    start: u64,
    /// Its length when the read began; later appends are read next time.
    len: u64,
}

fn open_existing(path: &Path) -> std::io::Result<Option<(File, u64)>> {
    match File::open(path) {
        Ok(file) => {
            let len = file.metadata()?.len();
            Ok(Some((file, len)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whole records from stream offset `at`, until about `limit` bytes were read, and the
/// offset after the last one. A line cut short at the end of the current file is still
/// being written and is left for the next read; one at the end of a rotated file never
/// will be finished and is skipped.
fn read_records(
    segments: &mut [Segment],
    mut at: u64,
    limit: u64,
) -> std::io::Result<(Vec<LogRecord>, u64)> {
    let began = at;
    let mut records = Vec::new();
    let count = segments.len();
    for (i, segment) in segments.iter_mut().enumerate() {
        let end = segment.start + segment.len;
        if at >= end {
            continue;
        }
        at = at.max(segment.start);
        segment.file.seek(SeekFrom::Start(at - segment.start))?;
        let mut reader = BufReader::new((&segment.file).take(end - at));
        let mut line = Vec::new();
        loop {
            if at - began >= limit {
                return Ok((records, at));
            }
            line.clear();
            let n = reader.read_until(b'\n', &mut line)? as u64;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                if i + 1 == count {
                    return Ok((records, at));
                }
                at = end;
                break;
            }
            at += n;
            if let Ok(record) = serde_json::from_slice::<LogRecord>(&line) {
                records.push(record);
            }
        }
    }
    Ok((records, at))
}

impl LogSink for LogStore {
    fn exited(&self, function: &str, instance: &str, reason: &str) {
        let message = format!("instance {instance} stopped unexpectedly: {reason}");
        self.platform(function, instance, None, message);
    }

    fn stopped(&self, function: &str, instance: &str, reason: &str) {
        let message = format!("instance {instance} stopped: {reason}");
        self.platform(function, instance, None, message);
    }

    fn line(&self, function: &str, instance: &str, stream: LogStream, line: &str) {
        let stream = match stream {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        };
        let (request_id, level, message) = parse_lambda_line(line);
        self.append(
            function,
            &LogRecord {
                ts: now_ms(),
                instance: instance.to_owned(),
                request_id,
                stream: stream.into(),
                level,
                message: message.replace('\r', "\n"),
            },
        );
    }
}

/// Split Lambda's `<time>\t<request id>\t<LEVEL>\t<message>` format (Node's, and the
/// Python bootstrap's `print`), or its Python `logging` format `[LEVEL]\t<time>\t<request
/// id>\t<message>`; other lines are kept whole.
fn parse_lambda_line(line: &str) -> (Option<String>, Option<String>, String) {
    let mut parts = line.splitn(4, '\t');
    if let (Some(first), Some(second), Some(third), Some(message)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    {
        let looks_like_time = |t: &str| t.len() >= 20 && t.as_bytes()[4] == b'-' && t.contains('T');
        let is_level = |l: &str| !l.is_empty() && l.chars().all(|c| c.is_ascii_uppercase());
        let bracketed = first
            .strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
            .filter(|l| is_level(l));
        let (time, rid, level) = match bracketed {
            Some(level) => (second, third, level),
            None => (first, second, third),
        };
        if looks_like_time(time) && is_level(level) {
            let rid = (rid != "undefined" && !rid.is_empty()).then(|| rid.to_owned());
            return (rid, Some(level.to_owned()), message.to_owned());
        }
    }
    (None, None, line.to_owned())
}

/// A [`LogRecord`]'s fields, borrowed.
struct Fields<'a> {
    ts: u64,
    instance: &'a str,
    request_id: Option<&'a str>,
    stream: &'a str,
    level: Option<&'a str>,
    message: &'a str,
}

/// One record as a JSON line, byte for byte what `serde_json` writes for a [`LogRecord`]
/// (same field order, absent options left out), without building one.
fn write_record(out: &mut Vec<u8>, record: &Fields<'_>) {
    use shoal_events::json;
    out.extend_from_slice(b"{\"ts\":");
    json::push_u64(out, record.ts);
    out.extend_from_slice(b",\"instance\":");
    json::push_str(out, record.instance);
    if let Some(request_id) = record.request_id {
        out.extend_from_slice(b",\"request_id\":");
        json::push_str(out, request_id);
    }
    out.extend_from_slice(b",\"stream\":");
    json::push_str(out, record.stream);
    if let Some(level) = record.level {
        out.extend_from_slice(b",\"level\":");
        json::push_str(out, level);
    }
    out.extend_from_slice(b",\"message\":");
    json::push_str(out, record.message);
    out.extend_from_slice(b"}\n");
}

/// Now, as Unix epoch milliseconds (log timestamps, event times).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh log directory, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir =
                std::env::temp_dir().join(format!("shoal-logs-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Dir(dir)
        }

        fn store(&self, max_bytes: u64) -> LogStore {
            LogStore::new(self.0.clone(), max_bytes).unwrap()
        }

        fn size(&self, file: &str) -> Option<u64> {
            std::fs::metadata(self.0.join(file)).ok().map(|m| m.len())
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn record(n: usize) -> LogRecord {
        LogRecord {
            ts: 1,
            instance: "f-1-1".into(),
            request_id: None,
            stream: "stdout".into(),
            level: None,
            message: format!("line {n:04} {}", "x".repeat(60)),
        }
    }

    fn numbers(records: &[LogRecord]) -> Vec<usize> {
        records
            .iter()
            .map(|r| r.message[5..9].parse().unwrap())
            .collect()
    }

    /// Bytes one `record(n)` takes in the file.
    fn record_len() -> u64 {
        serde_json::to_vec(&record(0)).unwrap().len() as u64 + 1
    }

    #[test]
    fn records_are_written_as_serde_writes_them_and_read_back() {
        let records = [
            record(1),
            LogRecord {
                ts: 1_796_010_664_845,
                instance: "noop-v1-1".into(),
                request_id: Some("0f4bc2d5-0e5c-494d-b463-a2520f9b416a".into()),
                stream: "platform".into(),
                level: Some("ERROR".into()),
                message: "REPORT RequestId: x\tDuration: 0.05 ms \"quoted\" \\ \u{1} ✓".into(),
            },
        ];
        let dir = Dir::new("format");
        let logs = dir.store(1 << 20);
        logs.append_all("f", &records);
        logs.lifecycle(
            "f",
            "i-1",
            "r-1",
            &["START RequestId: r-1 Version: 1", "END\t\"x\""],
        );
        logs.flush_all();
        let written = std::fs::read_to_string(logs.path("f")).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), 4);
        for (line, record) in lines.iter().zip(&records) {
            assert_eq!(*line, serde_json::to_string(record).unwrap());
        }
        let end: LogRecord = serde_json::from_str(lines[3]).unwrap();
        assert_eq!(end.message, "END\t\"x\"");
        assert_eq!(end.request_id.as_deref(), Some("r-1"));
        assert_eq!((end.stream.as_str(), end.level), ("platform", None));
        let (read, _) = logs.read("f", Some(0), 10).unwrap();
        assert_eq!(&read[..2], &records);
    }

    #[test]
    fn records_wait_to_be_written_together_but_every_read_sees_them() {
        let dir = Dir::new("batch");
        let logs = dir.store(1024 * record_len());
        for n in 0..3 {
            logs.append("f", &record(n));
        }
        assert_eq!(dir.size("f.log"), Some(0), "three small records wait");
        let (records, next) = logs.read("f", None, 10).unwrap();
        assert_eq!(numbers(&records), [0, 1, 2]);
        assert_eq!(next, 3 * record_len());
        assert_eq!(
            dir.size("f.log"),
            Some(3 * record_len()),
            "the read wrote them"
        );
        logs.append("f", &record(3));
        drop(logs);
        assert_eq!(
            dir.size("f.log"),
            Some(4 * record_len()),
            "dropping the store writes the rest"
        );
    }

    #[test]
    fn a_log_past_its_cap_is_rotated_and_one_old_file_is_kept() {
        let dir = Dir::new("rotate");
        let cap = 10 * record_len();
        let logs = dir.store(cap);
        for n in 0..95 {
            logs.append("f", &record(n));
        }
        logs.flush_all();
        // 95 records of which 10 fit a file: files of 10 (80..90) and 5 (90..95) remain.
        assert_eq!(dir.size("f.log"), Some(5 * record_len()));
        assert_eq!(dir.size("f.log.1"), Some(cap));
        assert_eq!(dir.size("f.log.2"), None);
        let (records, next) = logs.read("f", Some(0), 0).unwrap();
        assert_eq!(numbers(&records), (80..95).collect::<Vec<_>>());
        assert_eq!(
            next,
            95 * record_len(),
            "offsets count every byte ever written"
        );
    }

    #[test]
    fn a_follower_sees_every_record_once_across_rotations() {
        let dir = Dir::new("follow");
        let logs = dir.store(7 * record_len());
        let mut seen = Vec::new();
        let mut offset = 0;
        for n in 0..60 {
            logs.append("f", &record(n));
            // Reads after every few records, so the follower keeps up with rotations.
            if n % 3 == 0 {
                let (records, next) = logs.read("f", Some(offset), 0).unwrap();
                seen.extend(numbers(&records));
                offset = next;
            }
        }
        let (records, _) = logs.read("f", Some(offset), 0).unwrap();
        seen.extend(numbers(&records));
        assert_eq!(seen, (0..60).collect::<Vec<_>>());
    }

    #[test]
    fn a_follower_that_fell_behind_resumes_at_the_oldest_record_kept() {
        let dir = Dir::new("behind");
        let logs = dir.store(5 * record_len());
        logs.append("f", &record(0));
        let (_, offset) = logs.read("f", Some(0), 0).unwrap();
        for n in 1..30 {
            logs.append("f", &record(n));
        }
        let (records, next) = logs.read("f", Some(offset), 0).unwrap();
        assert_eq!(numbers(&records), (20..30).collect::<Vec<_>>());
        assert_eq!(next, 30 * record_len());
    }

    #[test]
    fn an_offset_beyond_the_end_starts_again_at_the_beginning() {
        let dir = Dir::new("beyond");
        let logs = dir.store(DEFAULT_MAX_LOG_BYTES);
        for n in 0..10 {
            logs.append("f", &record(n));
        }
        let (_, offset) = logs.read("f", Some(0), 0).unwrap();
        // The function is removed and deployed again: its log starts over.
        logs.remove("f");
        assert_eq!(dir.size("f.log"), None);
        logs.append("f", &record(100));
        let (records, next) = logs.read("f", Some(offset), 0).unwrap();
        assert_eq!(numbers(&records), [100]);
        assert_eq!(next, record_len());
    }

    #[test]
    fn a_tail_reaches_into_the_rotated_file() {
        let dir = Dir::new("tail");
        let logs = dir.store(10 * record_len());
        for n in 0..12 {
            logs.append("f", &record(n));
        }
        let (records, next) = logs.read("f", None, 5).unwrap();
        assert_eq!(numbers(&records), [7, 8, 9, 10, 11]);
        assert_eq!(next, 12 * record_len());
    }

    #[test]
    fn offsets_survive_a_restart_of_the_daemon() {
        let dir = Dir::new("restart");
        let cap = 4 * record_len();
        let offset = {
            let logs = dir.store(cap);
            for n in 0..10 {
                logs.append("f", &record(n));
            }
            logs.read("f", Some(0), 0).unwrap().1
        };
        let logs = dir.store(cap);
        for n in 10..13 {
            logs.append("f", &record(n));
        }
        let (records, next) = logs.read("f", Some(offset), 0).unwrap();
        assert_eq!(numbers(&records), [10, 11, 12]);
        assert_eq!(next, 13 * record_len());
        assert!(dir.size("f.log").unwrap() <= cap && dir.size("f.log.1").unwrap() <= cap);
    }

    #[test]
    fn a_page_is_capped_and_the_next_one_carries_on() {
        let dir = Dir::new("page");
        let logs = dir.store(DEFAULT_MAX_LOG_BYTES);
        let total = (PAGE_BYTES / record_len()) as usize + 100;
        for n in 0..total {
            logs.append("f", &record(n % 10_000));
        }
        let (first, offset) = logs.read("f", Some(0), 0).unwrap();
        assert!(
            offset <= PAGE_BYTES + record_len(),
            "page of {offset} bytes"
        );
        assert!(first.len() < total);
        let (rest, end) = logs.read("f", Some(offset), 0).unwrap();
        assert_eq!(first.len() + rest.len(), total);
        assert_eq!(end, total as u64 * record_len());
    }

    #[test]
    fn a_torn_last_line_of_the_rotated_file_is_skipped_not_waited_for() {
        let dir = Dir::new("torn");
        let logs = dir.store(3 * record_len());
        for n in 0..4 {
            logs.append("f", &record(n));
        }
        drop(logs);
        // A rotated file whose last line was never finished (the daemon died mid-write).
        let mut rotated = OpenOptions::new()
            .append(true)
            .open(dir.0.join("f.log.1"))
            .unwrap();
        rotated.write_all(br#"{"ts":1,"inst"#).unwrap();
        let logs = dir.store(3 * record_len());
        let (records, _) = logs.read("f", Some(0), 0).unwrap();
        assert_eq!(numbers(&records), [0, 1, 2, 3]);
    }

    #[test]
    fn log_files_are_private_and_wider_ones_are_narrowed_at_start() {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let dir = std::env::temp_dir().join(format!("shoal-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let old = dir.join("old.log");
        std::fs::write(&old, "{}\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();

        let logs = LogStore::new(dir.clone(), crate::DEFAULT_MAX_LOG_BYTES).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&old), 0o600, "left by an older daemon");
        logs.system("fresh", "i-1", "r-1", "it failed".into());
        assert_eq!(mode(&logs.path("fresh")), 0o600, "created");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lambda_format_lines_are_tagged() {
        let (rid, level, msg) =
            parse_lambda_line("2026-11-28T12:00:00.000Z\tabc-123\tINFO\thello\tworld");
        assert_eq!(
            (rid.as_deref(), level.as_deref(), msg.as_str()),
            (Some("abc-123"), Some("INFO"), "hello\tworld")
        );
        let (rid, level, msg) =
            parse_lambda_line("2026-11-28T12:00:00.000Z\tundefined\tWARN\tat load");
        assert_eq!(
            (rid, level.as_deref(), msg.as_str()),
            (None, Some("WARN"), "at load")
        );
        let (rid, level, msg) =
            parse_lambda_line("[ERROR]\t2026-11-28T12:00:00.000Z\tabc-9\tfrom logging\tmodule");
        assert_eq!(rid.as_deref(), Some("abc-9"));
        assert_eq!(level.as_deref(), Some("ERROR"));
        assert_eq!(msg, "from logging\tmodule");
        let (rid, level, msg) =
            parse_lambda_line("[WARNING]\t2026-11-28T12:00:00.000Z\t\tat import");
        assert_eq!(
            (rid, level.as_deref(), msg.as_str()),
            (None, Some("WARNING"), "at import")
        );
        let (rid, level, msg) = parse_lambda_line("plain output\twith tab");
        assert_eq!(
            (rid, level, msg.as_str()),
            (None, None, "plain output\twith tab")
        );
    }
}
