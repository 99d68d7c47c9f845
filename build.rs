//! Links the unwinder of the two programs sshd starts on every login
//! (`vmshare-keys` for each offered key, `vmshare-pam` for each session)
//! into them, so the dynamic loader maps libc alone: libgcc_s is a second
//! library to find, map and relocate at every start, a measurable part of
//! a key lookup (see docs/benchmarks.md).
//!
//! Rust's standard library asks the linker for `-lgcc_s`; a directory
//! searched first that holds `libgcc_s.a` (the toolchain's libgcc_eh.a,
//! the same unwinder built for static links) answers it. Where the
//! toolchain has no libgcc_eh.a, the programs link as usual.

use std::path::PathBuf;
use std::process::Command;

/// The programs started per login.
const PER_LOGIN: [&str; 2] = ["vmshare-keys", "vmshare-pam"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.ends_with("-linux-gnu") {
        return;
    }
    let Some(unwinder) = static_unwinder() else {
        println!("cargo:warning=no libgcc_eh.a: vmshare-keys and vmshare-pam load libgcc_s");
        return;
    };
    let Some(dir) = std::env::var_os("OUT_DIR").map(|d| PathBuf::from(d).join("static-unwinder"))
    else {
        return;
    };
    let link = dir.join("libgcc_s.a");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::remove_file(&link);
    if std::os::unix::fs::symlink(&unwinder, &link).is_err() {
        println!(
            "cargo:warning=cannot link {}: vmshare-keys and vmshare-pam load libgcc_s",
            link.display()
        );
        return;
    }
    for program in PER_LOGIN {
        println!("cargo:rustc-link-arg-bin={program}=-L{}", dir.display());
    }
}

/// The toolchain's static unwinder, as the C compiler that links names it.
fn static_unwinder() -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    // A bare name back means the compiler did not find it.
    (path.is_absolute() && path.is_file()).then_some(path)
}
