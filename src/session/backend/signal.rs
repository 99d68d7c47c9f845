//! The last resort: a session left where it is, ended by SIGKILL to its
//! sshd process and that process's descendants. Processes that left the tree
//! (a double fork) are out of reach; that is why the other backends exist.

use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{Backend, Login, Placement};
use crate::store::records::SessionRecord;
use crate::sys::procfs;

pub struct SignalBackend;

impl Backend for SignalBackend {
    fn place(&self, _login: &Login) -> Result<Placement, String> {
        Ok(Placement::Signal)
    }

    fn end(&self, record: &SessionRecord) -> Result<(), String> {
        signal_tree(record);
        Ok(())
    }

    fn is_live(&self, record: &SessionRecord) -> bool {
        procfs::is_alive(record.monitor_pid, record.monitor_start)
    }

    fn holds(&self, _record: &SessionRecord, _group: &Path) -> bool {
        false
    }

    fn outlives_login(&self, _record: &SessionRecord, _login: &Login) -> bool {
        false
    }
}

/// SIGKILLs the monitor and its descendants, if the monitor is still the
/// process the record names.
pub fn signal_tree(record: &SessionRecord) {
    if !procfs::is_alive(record.monitor_pid, record.monitor_start) {
        return;
    }
    // The tree is listed parent first, so the parent stops before it can
    // fork replacements.
    for pid in procfs::tree(record.monitor_pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}
