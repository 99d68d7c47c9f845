//! The agent: keeps the grant file in step with this VM's key in etcd.
//!
//! get → validate → write → watch from the next revision (with progress
//! requests, so a quiet key still confirms contact). Every connection
//! starts with a fresh read: the store it reaches may have been restored
//! from a snapshot or replaced since the last revision seen, and a watch
//! resumed after that revision would miss what it holds. A compacted or
//! canceled watch, or an answer from a history that went back (see
//! [`crate::history`]), re-reads the key; a broken stream reconnects with
//! backoff. In strict mode, no confirmed contact for `max_staleness` writes
//! a grant file that shares nothing, until contact returns and the current
//! document is read again.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, Identity, KvClient, TlsOptions, WatchOptions,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{error, info, warn};

use vmshare::grant::model::MAX_GRANT_FILE_BYTES;

use crate::config::{Config, Mode};
use crate::document::{self, Outcome};
use crate::grantfile::{self, Written};
use crate::history::{self, Header, Seen};
use crate::status::Status;

/// Room for the largest document the core accepts, plus the response around
/// it; anything bigger is refused by the parser, not by the transport.
const MAX_MESSAGE: usize = MAX_GRANT_FILE_BYTES + (1 << 20);
/// A single request (get, put, watch creation) that takes longer has failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the status in etcd is refreshed while nothing changes.
const STATUS_REFRESH: Duration = Duration::from_secs(30);
/// A status put that failed is tried again (with the latest status) after.
const STATUS_RETRY: Duration = Duration::from_secs(1);

pub struct Agent {
    config: Config,
    key: String,
    outcome: Outcome,
    /// Where the grant file came from; `None` before the first read and
    /// once that history is known to have gone back.
    applied: Option<Applied>,
    /// The cluster and the highest revision the last connection's answers
    /// showed (or, at start, the last run's status): a read that finds the
    /// revision lower says the history went back.
    reached: Option<(u64, i64)>,
    /// When strict staleness sets in, pushed forward by every contact.
    deadline: Instant,
    last_contact: Option<i64>,
    last_error: Option<String>,
    /// Text that could not be written yet (retried on every tick).
    unwritten: Option<String>,
    /// The status for etcd, sent by the session's reporter task: a revoke
    /// is written to the grant file without waiting for etcd to take the
    /// status, and statuses that pile up are sent as the latest one.
    report: watch::Sender<Option<Status>>,
    reported: Option<Instant>,
    /// Which endpoint the next connection tries.
    endpoint: usize,
}

/// What the grant file reflects, in the terms of the cluster it was read
/// from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Applied {
    cluster_id: u64,
    /// The store revision as of which the key is reflected.
    revision: i64,
    /// The key's revision (`None`: it did not exist).
    mod_revision: Option<i64>,
}

impl Applied {
    fn from_status(s: &Status) -> Option<Applied> {
        Some(Applied {
            cluster_id: s.cluster_id.as_deref()?.parse().ok()?,
            revision: s.applied_revision?,
            mod_revision: s.applied_mod_revision,
        })
    }
}

type Error = String;

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Agent {
    /// Picks up where a previous run on this boot left off (its status is in
    /// the run dir, a tmpfs): the staleness clock counts from its last
    /// contact. With none (first boot), strict mode shares nothing until
    /// contact.
    pub fn new(config: Config) -> Agent {
        let previous = Status::read(&config.status_path()).ok().flatten();
        let key = config.grants_key();
        let key_for_hash = key.clone();
        let last_contact = previous.as_ref().and_then(|s| s.last_contact);
        let applied = previous.as_ref().and_then(Applied::from_status);
        let since = last_contact.map_or(u64::MAX, |t| (now_secs() - t).max(0) as u64);
        let left = config
            .max_staleness
            .saturating_sub(Duration::from_secs(since));
        let outcome = previous.map_or(
            Outcome::Stale {
                reason: "no contact with etcd yet on this boot".into(),
            },
            |s| s.outcome,
        );
        Agent {
            report: watch::Sender::new(None),
            reported: None,
            key,
            outcome,
            reached: applied.map(|a| (a.cluster_id, a.revision)),
            applied,
            deadline: Instant::now() + left,
            last_contact,
            last_error: None,
            unwritten: None,
            // Spread the fleet over the members.
            endpoint: key_hash(&key_for_hash) % config.endpoints.len().max(1),
            config,
        }
    }

    /// Runs until the process is stopped.
    pub async fn run(mut self) {
        if self.config.mode == Mode::Strict && self.deadline <= Instant::now() {
            let reason = match self.last_contact {
                None => "no contact with etcd yet on this boot".to_string(),
                Some(_) => self.stale_reason(),
            };
            self.share_nothing(reason);
        }
        let mut backoff = BACKOFF_MIN;
        loop {
            let before = self.last_contact;
            if let Err(e) = self.session().await {
                warn!(vm = %self.config.vm_id, error = %e, "etcd session ended; reconnecting");
                self.last_error = Some(e);
                self.save_status();
            }
            if self.last_contact != before {
                backoff = BACKOFF_MIN;
            }
            self.guard(tokio::time::sleep(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection: a fresh read, then follow the watch until it
    /// breaks.
    async fn session(&mut self) -> Result<(), Error> {
        // One endpoint per connection, the next one after a failure: a
        // channel balanced over all of them keeps picking a dead member.
        let endpoint = self.config.endpoints[self.endpoint % self.config.endpoints.len()].clone();
        self.endpoint = self.endpoint.wrapping_add(1);
        let connecting = connect(self.config.clone(), endpoint);
        let client = self.guard(timeout(REQUEST_TIMEOUT, connecting)).await;
        let client = client.map_err(|_| "connecting to etcd timed out".to_string())??;
        let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        let mut wc = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
        let _reporter = Reporter::spawn(
            kv.clone(),
            self.config.status_key(),
            self.config.vm_id.clone(),
            self.report.subscribe(),
        );

        // Never a watch resumed after the last revision seen: this
        // connection may reach a store restored from a snapshot or
        // replaced since (even with the same cluster id and a revision
        // already past it), whose changes since the restore that watch
        // would miss.
        let mut seen = self.read(&mut kv).await?;
        let tick = tick(self.config.max_staleness);
        'watch: loop {
            let options = WatchOptions::new()
                .with_start_revision(seen.revision() + 1)
                .with_progress_notify();
            let created = self
                .guard(timeout(
                    REQUEST_TIMEOUT,
                    wc.watch(self.key.clone(), Some(options)),
                ))
                .await;
            let (mut watcher, mut stream) = created
                .map_err(|_| "creating the watch timed out".to_string())?
                .map_err(|e| format!("creating the watch: {e}"))?;
            self.contact();
            // Back in contact: the control plane sees it at once.
            self.last_error = self.outcome.error();
            self.send_status();
            let mut ticks = tokio::time::interval(tick);
            loop {
                let deadline = self.stale_deadline();
                tokio::select! {
                    message = stream.message() => {
                        let response = message
                            .map_err(|e| format!("watch: {e}"))?
                            .ok_or_else(|| "the watch stream ended".to_string())?;
                        let header = response.header().map(Header::from);
                        let progress = response.events().is_empty()
                            && !response.created()
                            && !response.canceled()
                            && response.compact_revision() == 0;
                        let checked = if progress {
                            seen.progress(header)
                        } else {
                            seen.data(header)
                        };
                        if let Err(broke) = checked {
                            // Not contact: nothing this stream says counts
                            // until the key has been read again.
                            let _ = watcher.cancel().await;
                            seen = self.read_again_after(&broke, &mut kv).await?;
                            continue 'watch;
                        }
                        self.reached = Some((seen.cluster_id(), seen.reached()));
                        self.contact();
                        if response.compact_revision() > 0 || response.canceled() || self.is_stale() {
                            if response.compact_revision() > 0 {
                                info!(vm = %self.config.vm_id, compacted = response.compact_revision(),
                                    "history compacted past the last revision; reading the key again");
                            } else if response.canceled() {
                                info!(vm = %self.config.vm_id, reason = response.cancel_reason(),
                                    "watch canceled; reading the key again");
                            }
                            let _ = watcher.cancel().await;
                            seen = self.read(&mut kv).await?;
                            continue 'watch;
                        }
                        if let Some(event) = response.events().last() {
                            let Some(kv_at) = event.kv() else { continue };
                            let revision = kv_at.mod_revision();
                            let (value, mod_revision) = match event.event_type() {
                                EventType::Put => (Some(kv_at.value()), Some(revision)),
                                EventType::Delete => (None, None),
                            };
                            let applied = Applied {
                                cluster_id: seen.cluster_id(),
                                revision,
                                mod_revision,
                            };
                            self.apply(value, revision, applied);
                        }
                    }
                    _ = ticks.tick() => {
                        watcher.request_progress().await.map_err(|e| format!("watch: {e}"))?;
                        if let Some(text) = self.unwritten.take() {
                            self.write(text);
                        }
                        let due = self.reported.is_none_or(|t| t.elapsed() >= STATUS_REFRESH);
                        if due {
                            self.send_status();
                        }
                    }
                    _ = sleep_until_some(deadline) => {
                        let reason = self.stale_reason();
                        self.share_nothing(reason);
                    }
                }
            }
        }
    }

    /// Reads the key (linearizable: what the cluster holds now) and
    /// applies it; returns where this connection's history starts.
    async fn read(&mut self, kv: &mut KvClient) -> Result<Seen, Error> {
        let key = self.key.clone();
        let got = self
            .guard(timeout(REQUEST_TIMEOUT, kv.get(key, None)))
            .await;
        let got = got
            .map_err(|_| "reading the grants key timed out".to_string())?
            .map_err(|e| format!("reading the grants key: {e}"))?;
        let header = got
            .header()
            .map(Header::from)
            .ok_or_else(|| "etcd answered the read without a response header".to_string())?;
        self.contact();
        if let Some((cluster_id, revision)) = self.reached {
            if let Some(broke) = history::compare(cluster_id, revision, &header) {
                warn!(vm = %self.config.vm_id, %broke,
                    "the grant file came from another etcd history; applying what etcd holds now");
            }
        }
        let found = got.kvs().first();
        let applied = Applied {
            cluster_id: header.cluster_id,
            revision: header.revision,
            mod_revision: found.map(|f| f.mod_revision()),
        };
        match found {
            Some(found) => self.apply(Some(found.value()), found.mod_revision(), applied),
            None => self.apply(None, header.revision, applied),
        }
        self.reached = Some((header.cluster_id, header.revision));
        Ok(Seen::new(header))
    }

    /// An answer from a history that went back: what the grant file came
    /// from is forgotten (the status says so, replacing one of it not yet
    /// sent), and the key is read again. If that read fails, strict mode
    /// shares nothing at once rather than keep a document etcd may no
    /// longer hold.
    async fn read_again_after(
        &mut self,
        broke: &history::Break,
        kv: &mut KvClient,
    ) -> Result<Seen, Error> {
        let reason = format!("{broke}: the grant file may not be what etcd holds");
        warn!(vm = %self.config.vm_id, %reason, "reading the grants key again");
        self.applied = None;
        self.last_error = Some(reason.clone());
        self.save_status();
        self.send_status();
        match self.read(kv).await {
            Ok(seen) => Ok(seen),
            Err(e) => {
                if self.config.mode == Mode::Strict {
                    self.share_nothing(format!("{reason}, and reading it again failed: {e}"));
                }
                Err(e)
            }
        }
    }

    /// Writes the grant file for the key's value at `revision` (its
    /// `mod_revision`, or the revision at which it did not exist), then
    /// reports it.
    fn apply(&mut self, value: Option<&[u8]>, revision: i64, applied: Applied) {
        let (text, outcome) = document::render(&self.key, value, revision);
        match &outcome {
            Outcome::Applied { .. } => {
                info!(vm = %self.config.vm_id, revision, "applying the grants document")
            }
            other => {
                warn!(vm = %self.config.vm_id, revision, problem = ?other.error(), "sharing nothing")
            }
        }
        self.last_error = outcome.error();
        self.outcome = outcome;
        self.applied = Some(applied);
        self.write(text);
        self.save_status();
        self.send_status();
    }

    /// Strict staleness (or first boot without contact): share nothing.
    fn share_nothing(&mut self, reason: String) {
        error!(vm = %self.config.vm_id, %reason, "sharing nothing");
        self.write(document::share_nothing(&reason));
        self.last_error = Some(reason.clone());
        self.outcome = Outcome::Stale { reason };
        self.save_status();
    }

    fn write(&mut self, text: String) {
        match grantfile::write(&self.config.grants, &text) {
            Ok(Written::Changed) => {}
            Ok(Written::Unchanged) => {
                info!(vm = %self.config.vm_id, "grant file already up to date; left as it is")
            }
            Err(e) => {
                let e = format!("writing {}: {e}", self.config.grants.display());
                error!(vm = %self.config.vm_id, error = %e, "grant file not written");
                self.last_error = Some(e);
                self.unwritten = Some(text);
            }
        }
    }

    fn contact(&mut self) {
        self.last_contact = Some(now_secs());
        self.deadline = Instant::now() + self.config.max_staleness;
    }

    fn is_stale(&self) -> bool {
        matches!(self.outcome, Outcome::Stale { .. })
    }

    fn stale_deadline(&self) -> Option<Instant> {
        (self.config.mode == Mode::Strict && !self.is_stale()).then_some(self.deadline)
    }

    fn stale_reason(&self) -> String {
        let since = self
            .last_contact
            .map_or_else(|| "this boot".to_string(), vmshare::grant::civil::utc);
        format!(
            "no confirmed contact with etcd since {since} (max_staleness {} ms, strict mode)",
            self.config.max_staleness.as_millis()
        )
    }

    /// Awaits `work`, sharing nothing meanwhile if strict staleness sets in.
    async fn guard<F: Future>(&mut self, work: F) -> F::Output {
        tokio::pin!(work);
        loop {
            let deadline = self.stale_deadline();
            tokio::select! {
                out = &mut work => return out,
                _ = sleep_until_some(deadline) => {
                    let reason = self.stale_reason();
                    self.share_nothing(reason);
                }
            }
        }
    }

    fn status(&self) -> Status {
        Status {
            vm_id: self.config.vm_id.clone(),
            mode: self.config.mode,
            max_staleness_ms: self.config.max_staleness.as_millis() as u64,
            outcome: self.outcome.clone(),
            cluster_id: self.applied.map(|a| a.cluster_id.to_string()),
            applied_revision: self.applied.map(|a| a.revision),
            applied_mod_revision: self.applied.and_then(|a| a.mod_revision),
            last_error: self.last_error.clone(),
            last_contact: self.last_contact,
        }
    }

    fn save_status(&self) {
        if let Err(e) = self.status().write(&self.config.status_path()) {
            warn!(vm = %self.config.vm_id, error = %e, "status not saved");
        }
    }

    /// Reports to `/vmshare/v1/status/<vm-id>` through the session's
    /// reporter (see [`Reporter`]); never waits.
    fn send_status(&mut self) {
        self.report.send_replace(Some(self.status()));
        self.reported = Some(Instant::now());
    }
}

/// Sends the latest status to etcd while a session lasts (aborted when
/// dropped). A failed put is logged and tried again with whatever status is
/// latest by then.
struct Reporter(JoinHandle<()>);

impl Reporter {
    fn spawn(
        mut kv: KvClient,
        key: String,
        vm_id: String,
        mut latest: watch::Receiver<Option<Status>>,
    ) -> Reporter {
        Reporter(tokio::spawn(async move {
            while latest.changed().await.is_ok() {
                loop {
                    let Some(json) = latest.borrow_and_update().as_ref().map(Status::to_json)
                    else {
                        break;
                    };
                    match timeout(REQUEST_TIMEOUT, kv.put(key.clone(), json, None)).await {
                        Ok(Ok(_)) => break,
                        Ok(Err(e)) => warn!(vm = %vm_id, error = %e, "status not sent"),
                        Err(_) => warn!(vm = %vm_id, "status not sent: timed out"),
                    }
                    tokio::time::sleep(STATUS_RETRY).await;
                }
            }
        }))
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often contact is confirmed: often enough that a few missed answers
/// still fit in `max_staleness`.
fn tick(max_staleness: Duration) -> Duration {
    (max_staleness / 4).clamp(Duration::from_millis(100), Duration::from_secs(30))
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn key_hash(key: &str) -> usize {
    key.bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
}

async fn connect(config: Config, endpoint: String) -> Result<Client, Error> {
    let keep_alive = tick(config.max_staleness);
    let mut options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(keep_alive, keep_alive.max(Duration::from_secs(1)))
        .with_keep_alive_while_idle(true)
        // A member cut off from its leader answers with an error rather
        // than with what may be stale data.
        .with_require_leader(true);
    if let Some(tls) = &config.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))
        };
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(t);
    }
    if let Some((user, password)) = &config.credentials {
        options = options.with_user(user.clone(), password.clone());
    }
    Client::connect([&endpoint], Some(options))
        .await
        .map_err(|e| format!("connecting to etcd at {endpoint}: {e}"))
}
