//! The last resort: a session left where it is, ended by SIGKILL to its
//! sshd process and that process's descendants. Processes that left the tree
//! (a double fork) are out of reach; that is why the other backends exist.

use std::path::Path;

use super::{Backend, Login, Placement, SystemBus};
use crate::store::records::SessionRecord;
use crate::sys::{kill, procfs};

pub struct SignalBackend;

impl Backend for SignalBackend {
    fn place(&self, _login: &Login) -> Result<Placement, String> {
        Ok(Placement::Signal)
    }

    fn end(&self, record: &SessionRecord, _bus: &SystemBus) -> Result<(), String> {
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
    let monitor = procfs::Stat {
        pid: record.monitor_pid,
        ppid: 0,
        start: record.monitor_start,
    };
    kill::kill_tree(&monitor, 0);
}
