//! Which guest session a process belongs to: by where its session was
//! placed (its cgroup, or logind's scope), or by descent from the session's
//! sshd process. Nothing the process can set (environment, arguments) plays
//! a part.

use std::borrow::Borrow;
use std::path::Path;

use crate::session::backend::cgroup;
use crate::store::records::SessionRecord;
use crate::sys::procfs;

/// The recorded session process `pid` belongs to, if any.
pub fn session_of<R: Borrow<SessionRecord>>(records: &[R], pid: i32) -> Option<&SessionRecord> {
    session_in(
        records,
        cgroup::group_of(pid).as_deref(),
        &procfs::ancestors(pid),
    )
}

/// The recorded session a process in cgroup `group`, descending from
/// `ancestors`, belongs to.
pub fn session_in<'a, R: Borrow<SessionRecord>>(
    records: &'a [R],
    group: Option<&Path>,
    ancestors: &[procfs::Stat],
) -> Option<&'a SessionRecord> {
    records.iter().map(Borrow::borrow).find(|r| {
        let by_group = group.is_some_and(|g| r.placement.backend().holds(r, g));
        let by_descent = ancestors
            .iter()
            .any(|a| a.pid == r.monitor_pid && a.start == r.monitor_start);
        by_group || by_descent
    })
}
