//! pkexec's machinery inside a host: a system bus and the real polkitd, the
//! way a VM runs them, plus a rule that lets the owner run anything through
//! pkexec without a password (as owners with `NOPASSWD: ALL` in sudoers can
//! through sudo), so what stops a guest is the PAM stack, not a prompt.
//!
//! The host's /run is its own tmpfs, so the bus listens on the usual
//! /run/dbus/system_bus_socket with Debian's own system bus configuration,
//! where pkexec and polkitd look for it.

use std::process::{Child, Stdio};
use std::time::Duration;

use super::{wait_until, Host, SCRATCH};

const BUS_LOG: &str = "/run/vmshare-e2e/dbus.log";
const POLKITD_LOG: &str = "/run/vmshare-e2e/polkitd.log";
const POLKITD: &str = "/usr/lib/polkit-1/polkitd";
const RULE: &str = "/etc/polkit-1/rules.d/10-vmshare-e2e.rules";

/// A running system bus and polkitd inside a host. Dropping it stops both.
pub struct Polkit {
    children: Vec<Child>,
}

impl Drop for Polkit {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Host {
    /// Starts the system bus and polkitd, with a rule that answers yes to
    /// every pkexec of `owner`, and waits until polkitd owns its bus name.
    pub fn start_polkit(&self, owner: &str) -> Polkit {
        assert!(
            self.path(POLKITD).exists(),
            "{POLKITD} is missing: install polkitd and pkexec"
        );
        self.write_file(
            RULE,
            &format!(
                "polkit.addRule(function(action, subject) {{\n    \
                 if (action.id == \"org.freedesktop.policykit.exec\" && subject.user == \"{owner}\") {{\n        \
                 return polkit.Result.YES;\n    }}\n}});\n"
            ),
            0,
            0,
            0o644,
        );
        self.mkdir("/run/dbus", 0o755);
        let mut polkit = Polkit {
            children: Vec::new(),
        };
        polkit
            .children
            .push(self.spawn_logged("dbus-daemon --system --nofork --nopidfile", BUS_LOG));
        let bus = wait_until(Duration::from_secs(10), || {
            self.path("/run/dbus/system_bus_socket").exists()
        });
        assert!(
            bus,
            "the system bus did not start:\n{}",
            self.read_file(BUS_LOG).unwrap_or_default()
        );
        polkit
            .children
            .push(self.spawn_logged(POLKITD, POLKITD_LOG));
        // Without --no-debug polkitd logs to stderr, this line once it
        // answers on the bus.
        let ready = wait_until(Duration::from_secs(20), || {
            self.read_file(POLKITD_LOG)
                .is_ok_and(|log| log.contains("Acquired the name org.freedesktop.PolicyKit1"))
        });
        assert!(
            ready,
            "polkitd did not come up on the bus:\n{}",
            self.read_file(POLKITD_LOG).unwrap_or_default()
        );
        polkit
    }

    /// Starts `command` in the host with its stdout and stderr in `log`.
    fn spawn_logged(&self, command: &str, log: &str) -> Child {
        assert!(log.starts_with(SCRATCH));
        self.command(&["sh", "-c", &format!("exec {command} >>{log} 2>&1")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting `{command}` in the host: {e}"))
    }
}
