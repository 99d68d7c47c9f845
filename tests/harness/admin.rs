//! Hosts where guests may not become root: vmshare's `vmshare-admin` PAM
//! lines included from the host's own sudo, su and polkit-1 stacks (the way
//! the package includes them), and an owner whom sudoers lets do anything.

use std::path::Path;

use super::*;

/// The stacks the package wires, and where Debian keeps each.
pub const ADMIN_STACKS: [&str; 4] = ["sudo", "sudo-i", "su", "polkit-1"];

impl Host {
    /// Installs /etc/pam.d/vmshare-admin and includes it before
    /// `@include common-account` in each stack of [`ADMIN_STACKS`] that
    /// the host has (a stack only in /usr/lib/pam.d gets a copy in
    /// /etc/pam.d).
    pub fn include_admin_check(&self) {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        self.install_file(
            &repo.join("config/pam.d/vmshare-admin"),
            "/etc/pam.d/vmshare-admin",
            0o644,
        );
        for stack in ADMIN_STACKS {
            let etc = format!("/etc/pam.d/{stack}");
            let Ok(text) = self
                .read_file(&etc)
                .or_else(|_| self.read_file(&format!("/usr/lib/pam.d/{stack}")))
            else {
                continue;
            };
            let mut included = false;
            let mut new = String::new();
            for line in text.lines() {
                if !included && line.trim() == "@include common-account" {
                    new.push_str("@include vmshare-admin\n");
                    included = true;
                }
                new.push_str(line);
                new.push('\n');
            }
            assert!(included, "{stack} has no `@include common-account`");
            self.write_file(&etc, &new, 0, 0, 0o644);
        }
    }

    /// Lets `user` run anything as root through sudo without a password,
    /// and su to root without one (pam_wheel `trust` for the `wheel`
    /// group): what makes an owner's guests root today.
    pub fn make_sudoer(&self, user: &str) {
        self.write_file(
            &format!("/etc/sudoers.d/{user}"),
            &format!("{user} ALL=(ALL:ALL) NOPASSWD: ALL\n"),
            0,
            0,
            0o440,
        );
        self.run_ok(&["groupadd", "-f", "wheel"]);
        self.run_ok(&["usermod", "-aG", "wheel", user]);
        let su = self
            .read_file("/etc/pam.d/su")
            .unwrap_or_else(|e| panic!("reading /etc/pam.d/su: {e}"));
        let trusted = su.replacen(
            "auth       sufficient pam_rootok.so\n",
            "auth       sufficient pam_rootok.so\nauth       sufficient pam_wheel.so trust use_uid\n",
            1,
        );
        assert_ne!(trusted, su, "/etc/pam.d/su has no pam_rootok line");
        self.write_file("/etc/pam.d/su", &trusted, 0, 0, 0o644);
    }
}

/// A directory only root may write in: a file there shows that a command
/// ran as root.
pub const ROOT_ONLY_DIR: &str = "/run/vmshare-e2e/root-only";

impl Host {
    /// Sets sudoers `Defaults` for `user` (e.g. `!pam_acct_mgmt`), in a
    /// sudoers file of their own.
    pub fn sudo_defaults(&self, user: &str, settings: &[&str]) {
        let text: String = settings
            .iter()
            .map(|s| format!("Defaults:{user} {s}\n"))
            .collect();
        self.write_file(
            &format!("/etc/sudoers.d/{user}-defaults"),
            &text,
            0,
            0,
            0o440,
        );
        self.run_ok(&["visudo", "-c", "-q"]);
    }

    /// A command that, run as root, leaves the file `marker` in
    /// [`ROOT_ONLY_DIR`] and prints the uid; made ready for
    /// [`Host::ran_as_root`].
    pub fn root_marker_command(&self, marker: &str) -> String {
        self.mkdir(ROOT_ONLY_DIR, 0o700);
        format!("sh -c 'touch {ROOT_ONLY_DIR}/{marker}; id -u'")
    }

    /// Whether a command of [`Host::root_marker_command`] ran as root.
    pub fn ran_as_root(&self, marker: &str) -> bool {
        self.path(&format!("{ROOT_ONLY_DIR}/{marker}")).exists()
    }
}

impl Host {
    /// The `PROBLEM admin …` lines of `vmshare doctor` (asserting doctor
    /// fails when there are any).
    pub fn doctor_admin_problems(&self) -> Vec<String> {
        let out = self.run(&["vmshare", "doctor"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let problems: Vec<String> = text
            .lines()
            .filter(|l| l.split_whitespace().take(2).eq(["PROBLEM", "admin"]))
            .map(str::to_string)
            .collect();
        assert!(
            problems.is_empty() || !out.status.success(),
            "doctor passed with problems:\n{text}"
        );
        problems
    }

    /// Puts `user` in `group` (made if the host has none).
    pub fn add_to_group(&self, user: &str, group: &str) {
        self.run_ok(&["groupadd", "-f", group]);
        self.run_ok(&["usermod", "-aG", group, user]);
    }

    /// Takes `user` out of `group`.
    pub fn remove_from_group(&self, user: &str, group: &str) {
        self.run_ok(&["gpasswd", "-d", user, group]);
    }
}
