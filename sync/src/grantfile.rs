//! The agent's one output on the VM: the grant file vmshared watches.

use std::io;
use std::path::Path;

use vmshare::sys::fsutil;

/// Whether a write changed the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Changed,
    Unchanged,
}

/// Replaces the grant file with `text` atomically (root-owned, 0644), unless
/// it already holds exactly `text` as a file the daemon trusts: an unchanged
/// file is left alone, so the daemon sees no change at all.
pub fn write(path: &Path, text: &str) -> io::Result<Written> {
    if let Ok(Some((current, _))) = fsutil::read_strict(path, text.len() as u64) {
        if current == text {
            return Ok(Written::Unchanged);
        }
    }
    fsutil::atomic_write(path, text.as_bytes(), 0o644, Some((0, 0)))?;
    Ok(Written::Changed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn writes_root_0644_and_leaves_an_unchanged_file_alone() {
        let dir = crate::config::tests::scratch();
        let path = dir.path().join("grants.toml");
        assert_eq!(write(&path, "# a\n").unwrap(), Written::Changed);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o644));
        // A second name for the file: a replaced file would have one link.
        std::fs::hard_link(&path, dir.path().join("held")).unwrap();
        assert_eq!(write(&path, "# a\n").unwrap(), Written::Unchanged);
        assert_eq!(std::fs::metadata(&path).unwrap().nlink(), 2);
        assert_eq!(write(&path, "# b\n").unwrap(), Written::Changed);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# b\n");

        // A file the daemon would not trust is replaced even if the text is
        // the same.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(write(&path, "# b\n").unwrap(), Written::Changed);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o644);
    }
}
