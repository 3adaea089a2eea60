//! Log files of spawned processes: reading, tailing, and waiting for a line.
//!
//! Every process the harness spawns writes stdout and stderr into one file.
//! Waiting for readiness means polling that file for a line that contains a
//! needle: the line is the event, the poll interval only bounds how late we
//! notice it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// How often a log file is polled while waiting for a line.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// How many lines of a log a failure message shows.
pub(crate) const TAIL_LINES: usize = 60;

/// Why waiting for a log line failed.
#[derive(Debug)]
pub(crate) enum WaitFailure {
    /// The timeout passed without the line appearing.
    Timeout,
    /// The process exited without writing the line.
    Exited(ExitStatus),
}

/// A log file written by a child process (stdout and stderr together).
#[derive(Debug, Clone)]
pub(crate) struct LogFile {
    /// Where the file is.
    path: PathBuf,
}

impl LogFile {
    /// A log file at `path` (it may not exist yet).
    pub(crate) fn new(path: PathBuf) -> LogFile {
        LogFile { path }
    }

    /// The path of the file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The current length in bytes (0 when the file does not exist yet).
    pub(crate) fn len(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// The whole content, lossily decoded, ANSI colour codes removed.
    pub(crate) fn read(&self) -> String {
        self.read_from(0)
    }

    /// The content from byte `offset` on, lossily decoded, ANSI codes removed.
    pub(crate) fn read_from(&self, offset: u64) -> String {
        let mut bytes = Vec::new();
        if let Ok(mut file) = File::open(&self.path)
            && file.seek(SeekFrom::Start(offset)).is_ok()
        {
            // A log we cannot read shows as empty; the caller reports it.
            let _ = file.read_to_end(&mut bytes);
        }
        strip_ansi(&String::from_utf8_lossy(&bytes))
    }

    /// The last `lines` lines, for failure messages.
    pub(crate) fn tail(&self, lines: usize) -> String {
        tail_of(&self.read(), lines)
    }

    /// Polls the file from byte `from` on until a line contains `needle`, and
    /// returns that line.
    ///
    /// `exited` is asked before every scan whether the writer has exited; a
    /// writer that exited without writing the line fails the wait at once
    /// (after one last scan, so a line written just before exiting counts).
    pub(crate) fn wait_for(
        &self,
        from: u64,
        needle: &str,
        timeout: Duration,
        mut exited: impl FnMut() -> Option<ExitStatus>,
    ) -> Result<String, WaitFailure> {
        let deadline = Instant::now() + timeout;
        let mut scanner = Scanner::new(from);
        loop {
            // Ask before scanning: if it had exited, everything it wrote is
            // already in the file, so a miss below is final.
            let status = exited();
            if let Some(line) = scanner.scan(&self.path, needle) {
                return Ok(line);
            }
            if let Some(status) = status {
                return Err(WaitFailure::Exited(status));
            }
            if Instant::now() >= deadline {
                return Err(WaitFailure::Timeout);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

/// Reads a growing file incrementally and finds a needle in its lines.
struct Scanner {
    /// Byte offset up to which the file has been read.
    pos: u64,
    /// The incomplete last line read so far (no newline yet).
    carry: Vec<u8>,
}

impl Scanner {
    /// A scanner starting at byte `pos`.
    fn new(pos: u64) -> Scanner {
        Scanner {
            pos,
            carry: Vec::new(),
        }
    }

    /// Reads what was appended since the last scan and returns the first line
    /// (complete or not) that contains `needle`.
    fn scan(&mut self, path: &Path, needle: &str) -> Option<String> {
        let mut file = File::open(path).ok()?;
        file.seek(SeekFrom::Start(self.pos)).ok()?;
        let mut fresh = Vec::new();
        let read = file.read_to_end(&mut fresh).ok()?;
        self.pos += read as u64;
        if read == 0 && self.carry.is_empty() {
            return None;
        }
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(&fresh);
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let text = strip_ansi(&String::from_utf8_lossy(&buf));
        let found = text
            .lines()
            .find(|line| line.contains(needle))
            .map(str::to_owned);
        // Keep the incomplete line: it may grow into a match (or a needle may
        // straddle two reads of the same line).
        self.carry = buf.split_off(complete);
        found
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn tail_of(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = String::new();
    if start > 0 {
        out.push_str(&format!("[... {start} earlier lines ...]\n"));
    }
    for line in &all[start..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Removes ANSI escape sequences (colours from tracing-subscriber and the
/// like), so needles match what a person sees.
pub(crate) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        // CSI: ESC '[' parameters... final byte in '@'..='~'.
        if chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn strips_colour_codes() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2025\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m ready"),
            "2025  INFO ready"
        );
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail_of("a\nb\nc\n", 2), "[... 1 earlier lines ...]\nb\nc\n");
        assert_eq!(tail_of("a\n", 5), "a\n");
    }

    #[test]
    fn scanner_finds_lines_across_partial_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut file = File::create(&path).unwrap();
        let mut scanner = Scanner::new(0);
        assert_eq!(scanner.scan(&path, "engine ready"), None);
        file.write_all(b"starting\nengine re").unwrap();
        assert_eq!(scanner.scan(&path, "engine ready"), None);
        file.write_all(b"ady on port 1\nmore\n").unwrap();
        assert_eq!(
            scanner.scan(&path, "engine ready").as_deref(),
            Some("engine ready on port 1")
        );
    }

    #[test]
    fn wait_for_starts_at_offset() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::new(dir.path().join("log"));
        std::fs::write(log.path(), "Server is ready\n").unwrap();
        let offset = log.len();
        let exited = || Some(std::process::ExitStatus::default());
        assert!(matches!(
            log.wait_for(offset, "Server is ready", Duration::from_secs(5), exited),
            Err(WaitFailure::Exited(_))
        ));
        assert!(
            log.wait_for(0, "Server is ready", Duration::from_secs(5), exited)
                .is_ok()
        );
    }
}
