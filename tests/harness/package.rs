//! Hosts for testing the Debian package: nothing of vmshare installed, and
//! /var an overlay too, so dpkg's database and the package's state change
//! only inside the host. The test installs the .deb itself and starts sshd
//! by hand, as there is no service manager.

use super::*;

impl Host {
    /// Builds a fresh host with sshd's host keys but without vmshare and
    /// without a running sshd.
    pub fn start_bare() -> Host {
        let mut host = Host::create(&["var.upper", "var.work"]);
        host.start_holder();
        let var = host.dir.display().to_string();
        // dpkg's database and the package's state stay in the host. /var/log
        // stays a private tmpfs, as in every host.
        host.run_ok(&[
            "sh",
            "-c",
            r#"set -e
mount -t overlay overlay -o "lowerdir=/var,upperdir=$0/var.upper,workdir=$0/var.work" /var
mount -t tmpfs -o mode=0755 tmpfs /var/log"#,
            &var,
        ]);
        host.run_ok(&["ssh-keygen", "-A"]);
        host
    }

    /// Starts sshd by hand (what the service manager does on a real host).
    pub fn launch_sshd(&mut self) {
        self.start_sshd();
    }

    /// Makes the running sshd re-read its configuration (SIGHUP, what
    /// `systemctl reload ssh` does) and waits until it listens again.
    pub fn reload_sshd(&self) {
        let sshd = self
            .sshd
            .as_ref()
            .unwrap_or_else(|| panic!("sshd is not running"));
        let before = self.sshd_log().matches("Server listening on").count();
        let pid = nix::unistd::Pid::from_raw(sshd.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)
            .unwrap_or_else(|e| panic!("sending SIGHUP to sshd: {e}"));
        let listening = wait_until(SSHD_START_TIMEOUT, || {
            self.sshd_log().matches("Server listening on").count() > before
        });
        assert!(
            listening,
            "sshd did not come back after SIGHUP:\n{}",
            self.sshd_log()
        );
    }
}
