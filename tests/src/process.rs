//! Spawned engine and worker processes, with their output in a log file.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::log::{LogFile, POLL_INTERVAL, TAIL_LINES, WaitFailure};

/// How long [`ChildProcess::terminate`] waits after SIGTERM before SIGKILL.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(20);

/// A child process and what we know about its exit.
#[derive(Debug)]
pub(crate) struct Proc {
    /// The std handle, used to reap the process.
    child: Child,
    /// Set once the process has been reaped.
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `command` in a process group of its own, stdout and stderr
    /// appended to `log`, stdin closed.
    pub(crate) fn spawn(command: &mut Command, log: &Path) -> std::io::Result<Proc> {
        let out = OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own group: Drop can take down grandchildren too (the
            // nats-server that `jetsaga dev` starts), and a Ctrl-C in the
            // terminal running the tests reaches only the test process.
            .process_group(0)
            .spawn()?;
        Ok(Proc {
            child,
            status: None,
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub(crate) fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends `signal` to the process (not its group); a process that already
    /// exited is left alone.
    pub(crate) fn signal(&mut self, signal: Signal) {
        if self.try_wait().is_some() {
            return;
        }
        match kill(Pid::from_raw(self.pid() as i32), signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => panic!("jetsaga-tests: kill({}, {signal}): {e}", self.pid()),
        }
    }

    /// Sends SIGKILL to the whole process group (the process and whatever it
    /// spawned that stayed in its group).
    ///
    /// Safe against PID reuse: while the leader is unreaped, or while any
    /// member of its group lives, the kernel does not hand the number out
    /// again. Only once the leader was reaped and the group emptied can the
    /// number come back, as a new process; then `/proc/<pid>` exists and the
    /// group is left alone.
    pub(crate) fn kill_group(&mut self) {
        let pid = self.pid();
        if self.status.is_some() && Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        match killpg(Pid::from_raw(pid as i32), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) | Err(Errno::EPERM) => {}
            Err(e) => panic!("jetsaga-tests: killpg({}): {e}", self.pid()),
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGKILL and reap.
    pub(crate) fn kill_and_wait(&mut self) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        self.signal(Signal::SIGKILL);
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("jetsaga-tests: wait for pid {}: {e}", self.pid()));
        self.status = Some(status);
        status
    }

    /// SIGTERM, wait up to `timeout`, then SIGKILL; returns the exit status.
    pub(crate) fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        match self.wait_timeout(timeout) {
            Some(status) => status,
            None => self.kill_and_wait(),
        }
    }
}

/// A spawned engine or worker process whose stdout and stderr go to a log
/// file.
///
/// The log lives in a temp dir that is removed on drop, unless the thread is
/// panicking: then it is kept and its path printed, so a failed test leaves
/// its evidence. Dropping kills the process and its process group.
#[derive(Debug)]
pub struct ChildProcess {
    /// A name for messages (`engine`, `booking-workers`, ...).
    name: String,
    /// The running (or exited) process.
    proc: Mutex<Proc>,
    /// Where its output goes.
    log: LogFile,
    /// The temp dir holding the log; `None` once kept.
    dir: Option<TempDir>,
}

impl ChildProcess {
    /// Spawns `program` with `args` and extra `envs` (added to the test's own
    /// environment, plus `NO_COLOR=1` and `RUST_BACKTRACE=1` unless given).
    ///
    /// Panics when the program cannot be started.
    pub fn spawn(name: &str, program: &Path, args: &[&str], envs: &[(&str, &str)]) -> ChildProcess {
        let dir = tempfile::Builder::new()
            .prefix(&format!("jetsaga-{}-", sanitize(name)))
            .tempdir()
            .unwrap_or_else(|e| panic!("jetsaga-tests: temp dir for {name}: {e}"));
        let log = LogFile::new(dir.path().join(format!("{}.log", sanitize(name))));
        let mut command = Command::new(program);
        command
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1");
        for (key, value) in envs {
            command.env(key, value);
        }
        let proc = Proc::spawn(&mut command, log.path()).unwrap_or_else(|e| {
            panic!(
                "jetsaga-tests: cannot start {name} ({}): {e}",
                program.display()
            )
        });
        tracing::debug!(name, pid = proc.pid(), log = %log.path().display(), "spawned");
        ChildProcess {
            name: name.to_owned(),
            proc: Mutex::new(proc),
            log,
            dir: Some(dir),
        }
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.lock().pid()
    }

    /// Waits until a line of the log contains `needle` and returns that line
    /// (the whole log counts, from the start).
    ///
    /// Panics with the tail of the log on timeout, or as soon as the process
    /// exits without having written such a line.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_log_from(0, needle, timeout)
    }

    /// Like [`wait_for_log`](Self::wait_for_log), looking only at output
    /// after byte `offset` (take it from [`log_len`](Self::log_len) before
    /// the action whose line you expect).
    pub fn wait_for_log_from(&self, offset: u64, needle: &str, timeout: Duration) -> String {
        let result = self
            .log
            .wait_for(offset, needle, timeout, || self.lock().try_wait());
        match result {
            Ok(line) => line,
            Err(WaitFailure::Timeout) => panic!(
                "jetsaga-tests: {} did not log {needle:?} within {timeout:?}; log {}:\n{}",
                self.name,
                self.log.path().display(),
                self.log.tail(TAIL_LINES)
            ),
            Err(WaitFailure::Exited(status)) => panic!(
                "jetsaga-tests: {} exited ({status}) without logging {needle:?}; log {}:\n{}",
                self.name,
                self.log.path().display(),
                self.log.tail(TAIL_LINES)
            ),
        }
    }

    /// Everything the process has written so far (stdout and stderr
    /// interleaved, ANSI colour codes removed).
    pub fn log(&self) -> String {
        self.log.read()
    }

    /// The current length of the log in bytes, an offset for
    /// [`wait_for_log_from`](Self::wait_for_log_from).
    pub fn log_len(&self) -> u64 {
        self.log.len()
    }

    /// The path of the log file.
    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// The exit status if the process has exited, else `None`.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.lock().try_wait()
    }

    /// Waits up to `timeout` for the process to exit by itself and returns
    /// its status; panics with the log tail if it is still running then.
    pub fn wait_for_exit(&self, timeout: Duration) -> ExitStatus {
        let status = self.lock().wait_timeout(timeout);
        status.unwrap_or_else(|| {
            panic!(
                "jetsaga-tests: {} still running after {timeout:?}; log {}:\n{}",
                self.name,
                self.log.path().display(),
                self.log.tail(TAIL_LINES)
            )
        })
    }

    /// Sends `signal` to the process (for instance SIGSTOP / SIGCONT to
    /// freeze a worker past its ack deadline).
    pub fn signal(&self, signal: Signal) {
        self.lock().signal(signal);
    }

    /// SIGKILL (`kill -9`, a real crash) and wait until it is gone. Only the
    /// process itself is killed; children it started live on, as after a
    /// real crash (Drop cleans up the group).
    pub fn kill(&mut self) {
        let status = self.lock().kill_and_wait();
        tracing::debug!(name = self.name, %status, "killed");
    }

    /// SIGTERM, then wait up to [`TERMINATE_TIMEOUT`] for a graceful exit
    /// before falling back to SIGKILL. Returns the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.terminate_timeout(TERMINATE_TIMEOUT)
    }

    /// [`terminate`](Self::terminate) with its own timeout.
    pub fn terminate_timeout(&mut self, timeout: Duration) -> ExitStatus {
        let status = self.lock().terminate(timeout);
        tracing::debug!(name = self.name, %status, "terminated");
        status
    }

    /// SIGKILL to the process and its whole process group.
    pub fn kill_group(&mut self) {
        let mut proc = self.lock();
        proc.kill_group();
        proc.kill_and_wait();
    }

    /// The process state, poisoning ignored (a panicking test must still be
    /// able to clean up).
    fn lock(&self) -> std::sync::MutexGuard<'_, Proc> {
        self.proc.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill_group();
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!(
                "jetsaga-tests: log of {} kept at {}",
                self.name,
                dir.keep().display()
            );
        }
    }
}

/// Runs `program` to completion with a bounded wait and returns its output
/// (for CLI commands such as `jetsaga saga start`). stdin is closed.
///
/// Panics when it cannot start or is still running after `timeout` (it is
/// killed then, and the panic shows what it printed).
pub fn run_command(
    program: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> Output {
    let mut command = Command::new(program);
    command
        .args(args)
        .env("NO_COLOR", "1")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let display = || format!("{} {}", program.display(), args.join(" "));
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("jetsaga-tests: cannot run {}: {e}", display()));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let mut proc = Proc {
        child,
        status: None,
    };
    let Some(status) = proc.wait_timeout(timeout) else {
        proc.kill_group();
        proc.kill_and_wait();
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        panic!(
            "jetsaga-tests: `{}` still running after {timeout:?}; stdout:\n{}\nstderr:\n{}",
            display(),
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        )
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Reads a pipe to its end on a thread of its own.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// A name made safe for a file name.
pub(crate) fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
