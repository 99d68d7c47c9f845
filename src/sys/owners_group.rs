//! The group of sharing owners, `vmshare-owners`. The shipped sshd drop-in
//! ends in `Match Group vmshare-owners`: for its members sshd reads no key
//! file (nor principals, `.k5login`, `.shosts`/`.rhosts`) from the home,
//! and asks the key lookup instead. sshd resolves the group at every
//! connection, so a change needs no reload. Only root's own actions put an
//! owner in it or take her out.

use std::process::Command;

/// The group's name, as the sshd drop-in's `Match Group` names it.
pub const GROUP: &str = "vmshare-owners";

/// Whether `user` is a member of the group (primary or supplementary,
/// as sshd's `Match Group` sees it). `Ok(false)` if either is missing.
pub fn is_member(user: &str) -> Result<bool, String> {
    use nix::unistd::{getgrouplist, Group, User};
    let Some(group) =
        Group::from_name(GROUP).map_err(|e| format!("looking up group {GROUP}: {e}"))?
    else {
        return Ok(false);
    };
    let Some(account) = User::from_name(user).map_err(|e| format!("looking up {user}: {e}"))?
    else {
        return Ok(false);
    };
    let name = std::ffi::CString::new(user).map_err(|_| format!("{user:?} has a NUL byte"))?;
    let groups = getgrouplist(&name, account.gid)
        .map_err(|e| format!("looking up the groups of {user}: {e}"))?;
    Ok(groups.contains(&group.gid))
}

/// Puts `user` in the group, creating the group if it is missing.
pub fn add(user: &str) -> Result<(), String> {
    if nix::unistd::Group::from_name(GROUP)
        .map_err(|e| format!("looking up group {GROUP}: {e}"))?
        .is_none()
    {
        run(&["groupadd", "--system", GROUP])?;
    }
    if is_member(user)? {
        return Ok(());
    }
    run(&["gpasswd", "--add", user, GROUP])
}

/// Takes `user` out of the group (nothing to do if not a member).
pub fn remove(user: &str) -> Result<(), String> {
    if !is_member(user)? {
        return Ok(());
    }
    run(&["gpasswd", "--delete", user, GROUP])
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
