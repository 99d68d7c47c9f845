//! The daemon's descriptor budget. Enforcement (compiling, reading session
//! records, /proc, cgroupfs, logind) needs descriptors whenever a pass
//! runs; control-socket clients must never be able to take them all. So the
//! soft RLIMIT_NOFILE is raised to the hard limit at start, and control
//! connections may hold only a small share of it.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use super::slots::Caps;

/// Control connections at once (root may hold as many again), however
/// high the limit.
const MAX_CONNECTIONS: usize = 128;
/// Control connections of one uid at once.
const MAX_PER_UID: usize = 16;
/// Control connections hold at most 2/SHARE of the limit (root's and
/// everyone else's): each also opens a few files while it is answered, and
/// enforcement keeps the rest.
const SHARE: u64 = 8;

/// Raises the soft descriptor limit to the hard one; returns the soft limit
/// in force and, if raising failed, why (the unit's system call filter
/// forbids it: there, LimitNOFILE= sets both).
pub fn raise() -> (u64, Option<nix::Error>) {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        // Assume the usual default.
        Err(e) => return (1024, Some(e)),
    };
    if soft >= hard {
        return (soft, None);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => (hard, None),
        Err(e) => (soft, Some(e)),
    }
}

/// The connection caps for a soft descriptor limit of `limit`.
pub fn caps(limit: u64) -> Caps {
    let share = usize::try_from(limit / SHARE).unwrap_or(usize::MAX);
    let total = share.clamp(1, MAX_CONNECTIONS);
    Caps {
        total,
        per_uid: (total / 4).clamp(1, MAX_PER_UID),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_stay_far_below_the_limit() {
        assert_eq!(
            caps(1024),
            Caps {
                total: 128,
                per_uid: 16
            }
        );
        assert_eq!(caps(1 << 20), caps(1024));
        assert_eq!(
            caps(256),
            Caps {
                total: 32,
                per_uid: 8
            }
        );
        assert_eq!(
            caps(0),
            Caps {
                total: 1,
                per_uid: 1
            }
        );
        for limit in [16, 64, 100, 1000, 4096, 65536] {
            let c = caps(limit);
            // Root's own share comes on top of the total.
            let most = (2 * c.total) as u64;
            assert!(most * 3 <= limit || limit < 64, "{limit}: {c:?}");
            assert!(c.per_uid < c.total || c.total == 1, "{limit}: {c:?}");
        }
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_least_where_it_was() {
        let (before, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let (now, _) = raise();
        assert!(now >= before);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap().0, now);
    }
}
