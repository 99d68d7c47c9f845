//! sshd inside a host and the ssh clients that log in to it: starting and
//! restarting sshd, running commands over ssh, the login assertions, and
//! long-lived sessions.

use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::{
    output_within, pids_with_cmdline, unique_marker, wait_until, Host, Key, SSHD_LOG,
    SSHD_START_TIMEOUT,
};

const SSH_TIMEOUT: Duration = Duration::from_secs(30);

/// The options of every test client: no config, no prompts, no host key
/// checks, only the key given.
pub const CLIENT_OPTIONS: [&str; 13] = [
    "-F",
    "/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "ConnectTimeout=5",
    "-oLogLevel=ERROR",
];

/// What a session prints when its command runs.
const RAN: &str = "vmshare-e2e-command-ran";

impl Host {
    /// The ssh client command for `user@127.0.0.1` with only `key`.
    pub fn ssh_command(&self, user: &str, key: &Key, cmd: &str) -> Command {
        self.ssh_command_with(&[], user, key, cmd)
    }

    /// Like `ssh_command`, with more client options first (`-tt`, …).
    pub fn ssh_command_with(
        &self,
        options: &[&str],
        user: &str,
        key: &Key,
        command: &str,
    ) -> Command {
        self.ssh_command_to(options, &format!("{user}@127.0.0.1"), key, Some(command))
    }

    /// The ssh client command for `dest` (`user@address`) with only `key`
    /// and `options`; without a command for `None`.
    pub fn ssh_command_to(
        &self,
        options: &[&str],
        dest: &str,
        key: &Key,
        command: Option<&str>,
    ) -> Command {
        let mut cmd = self.command(&["ssh", "-i", &key.private, "-p", "22"]);
        cmd.args(CLIENT_OPTIONS).args(options).arg(dest);
        cmd.args(command);
        cmd
    }

    /// Runs `cmd` over ssh as `user` with `key` and waits for it.
    pub fn ssh(&self, user: &str, key: &Key, cmd: &str) -> Output {
        output_within(self.ssh_command(user, key, cmd), SSH_TIMEOUT)
            .unwrap_or_else(|e| panic!("ssh {user}@host with key {} `{cmd}`: {e}", key.name))
    }

    /// Starts a long-lived ssh session; stdin, stdout and stderr are piped.
    /// Teardown kills it with the rest of the host.
    pub fn ssh_spawn(&self, user: &str, key: &Key, cmd: &str) -> Child {
        let mut command = self.ssh_command(user, key, cmd);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
            .spawn()
            .unwrap_or_else(|e| panic!("starting ssh {user}@host: {e}"))
    }

    /// Asserts that `key` opens a shell as `user` in which `id -un` prints
    /// `expected`.
    #[track_caller]
    pub fn assert_logs_in_as(&self, user: &str, key: &Key, expected: &str) {
        let out = self.ssh(user, key, "id -un");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || stdout.trim() != expected {
            panic!(
                "key {} logging in as {user}: expected a shell as {expected}, \
                 but ssh exited with {}\nstdout: {stdout}\nstderr: {}",
                key.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Asserts that `key` cannot log in as `user`: ssh itself fails (exit
    /// 255) and no command ran.
    #[track_caller]
    pub fn assert_refused(&self, user: &str, key: &Key) {
        let out = self.ssh(user, key, "id -un");
        if out.status.code() != Some(255) || !out.stdout.is_empty() {
            panic!(
                "key {} logging in as {user}: expected the login to be refused, \
                 but ssh exited with {}\nstdout: {}\nstderr: {}",
                key.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Asserts that `key` gets no command run as `user`, and returns ssh's
    /// exit code: 255 when sshd refused the key, 254 when the PAM session
    /// stack refused the session (sshd 9.2 then keeps the connection but
    /// runs nothing, and the client gets 254).
    #[track_caller]
    pub fn assert_no_session(&self, user: &str, key: &Key) -> i32 {
        let out = self.ssh(user, key, &format!("echo {RAN}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        match out.status.code() {
            Some(code @ (254 | 255)) if !stdout.contains(RAN) => code,
            _ => panic!(
                "key {} logging in as {user}: expected no session, \
                 but ssh exited with {}\nstdout: {stdout}\nstderr: {}",
                key.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// Asserts that `key` is accepted by sshd but its session refused by
    /// the PAM hook: no command runs and the connection is dropped, yet
    /// ssh never reports the key itself as refused.
    #[track_caller]
    pub fn assert_session_refused(&self, user: &str, key: &Key) {
        let out = self.ssh(user, key, &format!("echo {RAN}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let refused = matches!(out.status.code(), Some(254 | 255)) && !stdout.contains(RAN);
        if !refused || stderr.contains("Permission denied") {
            panic!(
                "key {} logging in as {user}: expected the key accepted and the \
                 session refused, but ssh exited with {}\nstdout: {stdout}\nstderr: {stderr}",
                key.name, out.status
            );
        }
    }

    /// sshd's log so far (debug level), for diagnostics.
    pub fn sshd_log(&self) -> String {
        self.read_file(SSHD_LOG)
            .unwrap_or_else(|e| format!("<no sshd log: {e}>"))
    }

    /// Starts the listening sshd and waits until it listens.
    pub(super) fn start_sshd(&mut self) {
        let check = self.run(&["/usr/sbin/sshd", "-t"]);
        if !check.status.success() {
            panic!(
                "sshd -t rejects the host's configuration:\n{}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let mut cmd = self.command(&[
            "/usr/sbin/sshd",
            "-D",
            "-E",
            SSHD_LOG,
            "-o",
            "PidFile=/run/sshd.pid",
            "-o",
            "LogLevel=DEBUG1",
        ]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // The log survives restarts: wait for a new "listening" line.
        let before = self.sshd_log().matches("Server listening on").count();
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting sshd: {e}"));
        self.sshd = Some(child);

        let deadline = Instant::now() + SSHD_START_TIMEOUT;
        loop {
            if self.sshd_log().matches("Server listening on").count() > before {
                return;
            }
            let exited = match self.sshd.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            };
            if let Some(how) = exited {
                panic!("sshd exited before listening ({how}):\n{}", self.sshd_log());
            }
            if Instant::now() > deadline {
                panic!("sshd did not start listening in time:\n{}", self.sshd_log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pid of the listening sshd.
    pub fn sshd_pid(&self) -> u32 {
        self.sshd
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("sshd is not running"))
    }

    /// Stops the listening sshd with `signal`, as a service manager would on
    /// restart, waits until it has exited, and starts a fresh one. The
    /// per-connection sshd processes (live sessions) are left alone.
    pub fn restart_sshd(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut old) = self.sshd.take() {
            let pid = nix::unistd::Pid::from_raw(old.id() as i32);
            nix::sys::signal::kill(pid, signal)
                .unwrap_or_else(|e| panic!("sending {signal} to sshd: {e}"));
            let exited = wait_until(SSHD_START_TIMEOUT, || matches!(old.try_wait(), Ok(Some(_))));
            assert!(exited, "sshd did not exit on {signal}");
        }
        self.start_sshd();
    }
}

/// A live ssh session whose remote side left a `setsid nohup` escapee
/// behind, both marked so the test can see whether they still run.
pub struct LiveSession {
    pub child: Child,
    pub escapee: String,
    pub foreground: String,
}

impl LiveSession {
    /// Opens the session and waits until both processes run; panics if
    /// `try_open` gets none or they do not appear.
    pub fn open(host: &Host, user: &str, key: &Key) -> LiveSession {
        let session = LiveSession::try_open(host, user, key).unwrap_or_else(|| {
            panic!(
                "session of key {} as {user} did not start (login refused, \
                 or no \"up\" within 30 s):\n{}",
                key.name,
                host.sshd_log()
            )
        });
        assert!(
            wait_until(Duration::from_secs(10), || session.processes() == 2),
            "session processes did not appear"
        );
        session
    }

    /// Opens the session; `None` when the login is refused or the session
    /// does not come up. Does not wait for the marked processes.
    pub fn try_open(host: &Host, user: &str, key: &Key) -> Option<LiveSession> {
        let m = unique_marker();
        let escapee = format!("{m}1");
        let foreground = format!("{m}2");
        let cmd = format!(
            "setsid nohup sleep {escapee} >/dev/null 2>&1 </dev/null & echo up; exec sleep {foreground}"
        );
        let mut child = host.ssh_spawn(user, key, &cmd);
        let line = super::first_line(&mut child, Duration::from_secs(30));
        let session = LiveSession {
            child,
            escapee,
            foreground,
        };
        // Dropping a session that did not come up kills its client.
        (line.trim() == "up").then_some(session)
    }

    /// How many of the session's two marked processes run.
    pub fn processes(&self) -> usize {
        pids_with_cmdline(&["sleep", &self.escapee]).len()
            + pids_with_cmdline(&["sleep", &self.foreground]).len()
    }

    /// Whether the session is completely gone: both processes and the
    /// client's connection.
    pub fn is_gone(&mut self) -> bool {
        self.processes() == 0 && matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits until the session is gone; returns how long that took.
    pub fn wait_gone(&mut self, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        wait_until(timeout, || self.is_gone()).then(|| started.elapsed())
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ssh session with a terminal (`ssh -tt`): what the remote terminal
/// shows arrives on `output`, and `type_in` types on it.
pub struct TtySession {
    pub child: Child,
    screen: mpsc::Receiver<String>,
    /// Everything the terminal showed so far.
    pub shown: String,
}

impl TtySession {
    pub fn open(host: &Host, user: &str, key: &Key, cmd: &str) -> TtySession {
        let mut command = host.ssh_command_with(&["-tt"], user, key, cmd);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting ssh -tt {user}@host: {e}"));
        let (tx, screen) = mpsc::channel();
        if let Some(mut out) = child.stdout.take() {
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = std::io::Read::read(&mut out, &mut buf) {
                    if tx
                        .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
        TtySession {
            child,
            screen,
            shown: String::new(),
        }
    }

    /// Waits until the terminal has shown something `found` picks out of
    /// all it showed; `None` after `timeout`.
    pub fn wait_for<T>(
        &mut self,
        timeout: Duration,
        found: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = found(&self.shown) {
                return Some(t);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.screen.recv_timeout(left) {
                Ok(more) => self.shown.push_str(&more),
                Err(_) => return found(&self.shown),
            }
        }
    }

    /// Types `text` on the remote terminal.
    pub fn type_in(&mut self, text: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("ssh stdin");
        stdin.write_all(text.as_bytes()).expect("typing into ssh");
        stdin.flush().expect("typing into ssh");
    }
}

impl Drop for TtySession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
