//! Function logs: every line an instance prints, tagged with instance and request id,
//! appended as JSON lines to `logs/<function>.log` in the data directory. Platform
//! messages about a call (why it failed) go to the same log. What a function prints can
//! hold its secrets, so the folder is 0700 and each file 0600, put right at start too.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use shoal_api::LogRecord;
use shoal_runtime::{LogSink, LogStream};

pub(crate) struct LogStore {
    dir: PathBuf,
    files: Mutex<HashMap<String, File>>,
}

impl LogStore {
    pub fn new(dir: PathBuf) -> std::io::Result<LogStore> {
        crate::datadir::private_folder(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                crate::datadir::private_file(&entry.path())?;
            }
        }
        Ok(LogStore {
            dir,
            files: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn path(&self, function: &str) -> PathBuf {
        self.dir.join(format!("{function}.log"))
    }

    pub fn append(&self, function: &str, record: &LogRecord) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if !files.contains_key(function) {
            match OpenOptions::new()
                .create(true)
                .append(true)
                .mode(crate::datadir::PRIVATE_FILE)
                .open(self.path(function))
            {
                Ok(file) => {
                    files.insert(function.to_owned(), file);
                }
                Err(e) => {
                    tracing::warn!(function, error = %e, "cannot open log file");
                    return;
                }
            }
        }
        if let Some(file) = files.get_mut(function) {
            let _ = file.write_all(&line);
        }
    }

    /// A platform message about one invocation (e.g. why it failed), in the same log.
    pub fn system(&self, function: &str, instance: &str, request_id: &str, message: String) {
        self.append(
            function,
            &LogRecord {
                ts: now_ms(),
                instance: instance.to_owned(),
                request_id: Some(request_id.to_owned()),
                stream: "platform".into(),
                level: Some("ERROR".into()),
                message,
            },
        );
    }

    /// Records from byte offset `since` (or the last `tail` records when `None`), and the
    /// offset to continue from.
    pub fn read(
        &self,
        function: &str,
        since: Option<u64>,
        tail: usize,
    ) -> std::io::Result<(Vec<LogRecord>, u64)> {
        let mut file = match File::open(self.path(function)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let start = match since {
            Some(offset) => offset.min(len),
            // Good enough for a tail: look at the last 1 MiB only.
            None => len.saturating_sub(1024 * 1024),
        };
        file.seek(SeekFrom::Start(start))?;
        let mut reader = BufReader::new(file.take(len - start));
        let mut records = Vec::new();
        let mut consumed = start;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break; // a partial last line is read next time
            }
            consumed += n as u64;
            if let Ok(record) = serde_json::from_slice::<LogRecord>(&line) {
                records.push(record);
            }
        }
        if since.is_none() && records.len() > tail {
            records.drain(..records.len() - tail);
        }
        Ok((records, consumed))
    }

    pub fn remove(&self, function: &str) {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(function);
        let _ = std::fs::remove_file(self.path(function));
    }
}

impl LogSink for LogStore {
    fn exited(&self, function: &str, instance: &str, reason: &str) {
        self.append(
            function,
            &LogRecord {
                ts: now_ms(),
                instance: instance.to_owned(),
                request_id: None,
                stream: "platform".into(),
                level: Some("ERROR".into()),
                message: format!("instance {instance} stopped unexpectedly: {reason}"),
            },
        );
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

/// Split Lambda's `<time>\t<request id>\t<LEVEL>\t<message>` format; other lines are
/// kept whole.
fn parse_lambda_line(line: &str) -> (Option<String>, Option<String>, String) {
    let mut parts = line.splitn(4, '\t');
    if let (Some(time), Some(rid), Some(level), Some(message)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    {
        let looks_like_time = time.len() >= 20 && time.as_bytes()[4] == b'-' && time.contains('T');
        if looks_like_time && level.chars().all(|c| c.is_ascii_uppercase()) {
            let rid = (rid != "undefined" && !rid.is_empty()).then(|| rid.to_owned());
            return (rid, Some(level.to_owned()), message.to_owned());
        }
    }
    (None, None, line.to_owned())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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

        let logs = LogStore::new(dir.clone()).unwrap();
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
        let (rid, level, msg) = parse_lambda_line("plain output\twith tab");
        assert_eq!(
            (rid, level, msg.as_str()),
            (None, None, "plain output\twith tab")
        );
    }
}
