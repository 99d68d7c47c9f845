//! `vmshared`: watches the grant file, keeps the snapshot current, ends
//! revoked sessions, and answers the control socket.

mod backstop;
mod deadline;
mod fdlimit;
mod leave;
mod pass;
mod persist;
mod portal;
mod server;
mod slots;
mod timerfd;
mod watch;

pub use pass::{apply, compile_grant_file, now_ns, Compiled, Pass, Scope};

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::session::backend::SystemBus;
use crate::store::config::Config;
use crate::store::records;
use crate::sys::log::audit;
use crate::sys::log::sdnotify;
use crate::sys::log::syslog::Level;

/// Re-read the grant file at least this often, whatever inotify says.
pub const BACKSTOP: Duration = Duration::from_secs(30);
/// After an event that may leave the file half-written (truncate, create,
/// delete, chmod), wait this long for the writer to finish before applying.
/// Complete writes (rename into place, close after writing) apply at once.
pub const SETTLE: Duration = Duration::from_millis(200);
/// A pass still running after this long is stuck (its own waits are
/// bounded: a few seconds per session it ends): the loop stops feeding the
/// watchdog, so systemd restarts the daemon, which rebuilds everything from
/// the grant file and the run dir.
const PASS_STALLED: Duration = Duration::from_secs(120);
/// A pass that could not judge every session (out of descriptors, the
/// sessions directory unreadable) runs again this soon, then less often
/// while it keeps failing (up to 16 times this).
const RETRY: Duration = Duration::from_millis(100);

#[derive(clap::Parser, Debug)]
#[command(name = "vmshared", version, about = "The vmshare daemon")]
struct Args {
    /// Agent configuration file.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

/// Entry point of `vmshared`; the single place errors become an exit code.
pub fn main() -> ExitCode {
    use clap::Parser;
    let args = Args::parse();
    init_logging();
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            error!("bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VMSHARE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not for the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Records an audit event once, from one set of fields: in journald (or
/// syslog) for the audit trail, and as the daemon's log line. `detail`
/// (e.g. how a session was ended) goes on the log line only.
fn audit_event(event: &audit::Event, detail: &str) {
    audit::record("vmshared", Level::Notice, event);
    info!(
        event = event.kind.map(audit::Kind::as_str),
        owner = field(event.owner),
        guest = field(event.guest),
        fingerprint = field(event.fingerprint),
        remote = field(event.remote),
        session = field(event.session),
        "{}{detail}",
        event.message
    );
}

/// An audit field for the log line; an empty one is left out, as in the
/// audit record.
fn field(value: &str) -> Option<tracing::field::DisplayValue<&str>> {
    (!value.is_empty()).then(|| tracing::field::display(value))
}

/// What woke the loop.
/// The periodic pass's reason: the one pass that also tidies up.
const PERIODIC: &str = "periodic re-read";

enum Wake {
    /// The grant file changed and is complete.
    Changed(&'static str),
    /// The grant file may be mid-write.
    Unsettled,
    /// The running pass ended.
    Passed(Result<Pass, tokio::task::JoinError>),
}

/// The one pass that may run at a time, and the reason for another once it
/// is done. Passes run on the blocking pool (they compile the grant file
/// and wait for sessions to die), so the loop keeps answering meanwhile.
struct Passes {
    shared: Shared,
    running: Option<(tokio::task::JoinHandle<Pass>, tokio::time::Instant)>,
    queued: Option<(&'static str, Scope)>,
}

impl Passes {
    fn request(&mut self, reason: &'static str) {
        let scope = if reason == PERIODIC {
            Scope::EnforceAndTidy
        } else {
            Scope::Enforce
        };
        if self.running.is_some() {
            // The file may have changed after the running pass read it. A
            // queued tidy-up is kept whatever else is asked meanwhile.
            let scope = self.queued.map_or(scope, |(_, queued)| queued.max(scope));
            self.queued = Some((reason, scope));
            return;
        }
        self.start(reason, scope);
    }

    fn start(&mut self, reason: &'static str, scope: Scope) {
        let pass = spawn_pass(&self.shared, reason, scope);
        self.running = Some((pass, tokio::time::Instant::now()));
    }

    /// Waits for the running pass, if any, to end.
    async fn done(&mut self) -> Result<Pass, tokio::task::JoinError> {
        match &mut self.running {
            Some((pass, _)) => pass.await,
            None => std::future::pending().await,
        }
    }

    /// Forgets the pass that ended and starts the queued one.
    fn finished(&mut self) {
        self.running = None;
        if let Some((reason, scope)) = self.queued.take() {
            self.start(reason, scope);
        }
    }

    fn is_running(&self) -> bool {
        self.running.is_some()
    }

    fn stalled(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() > PASS_STALLED)
    }
}

/// What every pass works with.
#[derive(Clone)]
struct Shared {
    config: Arc<Config>,
    /// The session records read so far; passes run one at a time.
    records: Arc<Mutex<records::Cache>>,
    bus: Arc<SystemBus>,
}

/// Runs a pass on the blocking pool.
fn spawn_pass(
    shared: &Shared,
    reason: &'static str,
    scope: Scope,
) -> tokio::task::JoinHandle<Pass> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        // A pass that panicked left the cache as it was: still sound.
        let mut records = shared.records.lock().unwrap_or_else(|e| e.into_inner());
        apply(&shared.config, reason, scope, &mut records, &shared.bus)
    })
}

async fn run(config: Config) -> Result<(), String> {
    let (nofile, raise_failed) = fdlimit::raise();
    if let Some(e) = raise_failed {
        warn!("cannot raise the descriptor limit: {e}; keeping {nofile}");
    }
    let caps = fdlimit::caps(nofile);
    pass::prepare_run_dir(&config)
        .map_err(|e| format!("cannot create run dir {}: {e}", config.run_dir.display()))?;
    let config = Arc::new(config);
    // One connection to logind for the daemon's life, made when first
    // needed and driven by this runtime.
    let bus = Arc::new(SystemBus::new(tokio::runtime::Handle::current()));
    let shared = Shared {
        config: Arc::clone(&config),
        records: Arc::new(Mutex::new(records::Cache::default())),
        bus: Arc::clone(&bus),
    };
    let first = spawn_pass(&shared, "start", Scope::EnforceAndTidy)
        .await
        .map_err(|e| format!("the first grant-file pass failed: {e}"))?;
    let mut deadlines =
        deadline::Deadlines::new().map_err(|e| format!("cannot create the deadline timer: {e}"))?;
    arm(&mut deadlines, first.next_deadline);
    let mut watcher = watch::Watcher::new(&config.grants)
        .map_err(|e| format!("cannot watch {}: {e}", config.grants.display()))?;
    let (pass_tx, mut pass_rx) = mpsc::channel(64);
    // Enforcement never waits on the control socket: if it cannot be bound,
    // the server binds it later while the passes go on.
    let listener = server::bind(&config.socket_path())
        .map_err(|e| {
            error!(
                "cannot listen on {}: {e}; retrying",
                config.socket_path().display()
            )
        })
        .ok();
    let slots = slots::Shared::new(caps);
    tokio::spawn(server::run(listener, Arc::clone(&config), pass_tx, slots));
    persist::spawn(Arc::clone(&config), bus);

    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let backstop = backstop::Backstop::new(BACKSTOP)
        .map_err(|e| format!("cannot create the backstop timer: {e}"))?;
    let watchdog = sdnotify::watchdog_interval();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    // A racy snapshot (grant file changed within a timestamp tick of it)
    // makes every lookup hash the file; rewrite it once the window passes.
    let mut racy_at = first.racy.then(racy_deadline);
    let mut settle_at: Option<tokio::time::Instant> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut failed_passes: u32 = 0;
    let mut passes = Passes {
        shared,
        running: None,
        queued: None,
    };

    sdnotify::notify("READY=1");
    info!(
        grants = %config.grants.display(), socket = %config.socket_path().display(),
        nofile, connections = caps.total, per_uid = caps.per_uid,
        "vmshared ready"
    );

    loop {
        let wake = tokio::select! {
            // While a pass runs, changes wait in the kernel's queue and are
            // read as a batch after it, as many as there are: one more pass.
            ev = watcher.next(), if !passes.is_running() => match ev {
                Ok(watch::WatchEvent::Complete) => Wake::Changed("grant file changed"),
                Ok(watch::WatchEvent::Partial) => Wake::Unsettled,
                Ok(watch::WatchEvent::Overflow) => {
                    // Events were lost or the directory was replaced: watch
                    // afresh, then re-read.
                    if let Ok(fresh) = watch::Watcher::new(&config.grants) {
                        watcher = fresh;
                    }
                    Wake::Changed("inotify overflow or directory replaced")
                }
                Ok(watch::WatchEvent::Irrelevant) => continue,
                Err(e) => {
                    warn!("watch error: {e}; re-watching");
                    watcher = watch::Watcher::new(&config.grants).map_err(|e| format!("cannot re-watch: {e}"))?;
                    Wake::Changed("watch re-established")
                }
            },
            tick = backstop.tick() => match tick {
                Ok(()) => Wake::Changed(PERIODIC),
                Err(e) => {
                    warn!("backstop timer: {e}");
                    Wake::Changed(PERIODIC)
                }
            },
            wake = deadlines.wake() => match wake {
                Ok(()) => Wake::Changed("an expires deadline or a wall-clock change"),
                Err(e) => {
                    warn!("deadline timer: {e}");
                    Wake::Changed("deadline timer error")
                }
            },
            _ = sleep_until(settle_at) => Wake::Changed("grant file settled"),
            _ = sleep_until(racy_at) => Wake::Changed("snapshot refresh"),
            _ = sleep_until(retry_at) => Wake::Changed("retrying an incomplete pass"),
            _ = hup.recv() => Wake::Changed("SIGHUP"),
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                if passes.stalled() {
                    error!("a grant-file pass has run for over {PASS_STALLED:?}; no longer feeding the watchdog");
                } else {
                    sdnotify::notify("WATCHDOG=1");
                }
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(reason) = pass_rx.recv() => Wake::Changed(reason),
            done = passes.done() => Wake::Passed(done),
        };
        match wake {
            Wake::Changed(reason) => {
                // The pass (or the one queued) settles both; disarmed, they
                // do not fire again while it runs.
                settle_at = None;
                racy_at = None;
                retry_at = None;
                passes.request(reason);
            }
            Wake::Unsettled => {
                settle_at.get_or_insert_with(|| tokio::time::Instant::now() + SETTLE);
            }
            Wake::Passed(done) => {
                let complete = match done {
                    Ok(pass) => {
                        racy_at = pass.racy.then(racy_deadline);
                        arm(&mut deadlines, pass.next_deadline);
                        !pass.retry
                    }
                    Err(e) => {
                        error!("grant-file pass failed: {e}");
                        false
                    }
                };
                failed_passes = if complete {
                    0
                } else {
                    failed_passes.saturating_add(1)
                };
                passes.finished();
                // A queued pass, if one started, is the retry.
                retry_at = (failed_passes > 0 && !passes.is_running())
                    .then(|| tokio::time::Instant::now() + retry_delay(failed_passes));
            }
        }
    }
    info!("vmshared stopping; sessions stay recorded and confined");
    let _ = std::fs::remove_file(config.socket_path());
    Ok(())
}

/// Arms the deadline timer; if that fails, the backstop re-read still ends
/// expired sessions (late), and the key lookup and hook refuse on time.
fn arm(deadlines: &mut deadline::Deadlines, at: Option<i64>) {
    if let Err(e) = deadlines.arm(at) {
        error!("cannot arm the deadline timer for {at:?}: {e}");
    }
}

fn racy_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now()
        + Duration::from_nanos(crate::store::snapshot::RACY_WINDOW_NS as u64)
        + Duration::from_millis(100)
}

/// How long to wait before the next try after `failed` incomplete passes
/// in a row.
fn retry_delay(failed: u32) -> Duration {
    RETRY * 2u32.pow(failed.saturating_sub(1).min(4))
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incomplete_pass_is_retried_soon_then_less_often() {
        let delays: Vec<u128> = (1..=7).map(|n| retry_delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 1600, 1600]);
        assert_eq!(retry_delay(u32::MAX), Duration::from_millis(1600));
    }
}
