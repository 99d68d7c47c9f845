//! A private view of the build host's /etc and /var/lib, for tests that run
//! vmshare's programs as root on the build host itself.
//!
//! Taking an owner's keys over (`vmshare invite`, `accept`, `sharing on`,
//! `owner-keys import`) puts her in group vmshare-owners with `groupadd`
//! and `gpasswd`, which write /etc/group and /etc/gshadow, and keeps her
//! lines in the default state dir, /var/lib/vmshare. A `SystemOverlay` is
//! a mount namespace, kept alive by a sleeping process, where /etc and
//! /var/lib are overlays whose upper layers are directories of the test:
//! every command entered into it sees the host's files plus what earlier
//! commands of the same test changed, and nothing reaches the host.

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The overlaid directories, and the layer names under the test's directory.
const OVERLAID: [(&str, &str); 2] = [("/etc", "etc"), ("/var/lib", "var-lib")];

pub struct SystemOverlay {
    holder: Child,
}

impl SystemOverlay {
    /// Sets the overlays up, with their layers in `dir` (which must not be
    /// below /etc or /var/lib, and whose path mount options can carry).
    pub fn new(dir: &Path) -> SystemOverlay {
        let shown = dir.display().to_string();
        assert!(
            !shown.contains([',', ':', '\\', '"']),
            "overlay layer path {shown} holds a character mount options cannot carry"
        );
        let mut setup = String::from("set -e\n");
        for (target, layer) in OVERLAID {
            for part in ["upper", "work"] {
                let path = dir.join(format!("{layer}.{part}"));
                fs::create_dir_all(&path)
                    .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
            }
            setup.push_str(&format!(
                "mount -t overlay overlay -o \"lowerdir={target},upperdir=$1/{layer}.upper,workdir=$1/{layer}.work\" {target}\n"
            ));
        }
        setup.push_str("echo ready\nexec sleep infinity\n");
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--"])
            .args(["sh", "-c", &setup, "sh"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the overlay's namespace holder: {e}"));
        let mut line = String::new();
        if let Some(stdout) = holder.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        if line.trim() != "ready" {
            let _ = holder.kill();
            let _ = holder.wait();
            let mut stderr = String::new();
            if let Some(mut err) = holder.stderr.take() {
                let _ = err.read_to_string(&mut stderr);
            }
            panic!("setting up the overlays on /etc and /var/lib failed (root needed):\n{stderr}");
        }
        SystemOverlay { holder }
    }

    /// A command that runs `program` inside the overlays' namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.holder.id().to_string())
            .arg("-m")
            .arg("--")
            .arg(program);
        cmd
    }
}

impl Drop for SystemOverlay {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
