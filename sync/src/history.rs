//! Whether etcd's answers still come from the history the grant file was
//! read from. Pure: response headers in, verdicts out.
//!
//! Every etcd response carries a header: the cluster's id, the member that
//! answered, the store revision and that member's raft term. Over one
//! connection they never go back. An answer from another cluster, with a
//! lower revision than one already seen, or with a lower term from the same
//! member comes from a store that is not the one read: restored from a
//! snapshot, or replaced. Nothing learnt from the old one (the document
//! applied, the revision reached) may then be trusted or reported until the
//! key has been read again.
//!
//! A restore that has been written past the revision the agent saw, by a
//! cluster with the same id, cannot be told from the headers at all; that
//! is why the agent reads its key afresh on every connection instead of
//! resuming a watch (see `agent`).

use std::fmt;

/// The parts of an etcd response header that place it in a history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub cluster_id: u64,
    pub member_id: u64,
    pub revision: i64,
    pub raft_term: u64,
}

impl From<&etcd_client::ResponseHeader> for Header {
    fn from(h: &etcd_client::ResponseHeader) -> Header {
        Header {
            cluster_id: h.cluster_id(),
            member_id: h.member_id(),
            revision: h.revision(),
            raft_term: h.raft_term(),
        }
    }
}

/// How an answer contradicts the history the agent knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// Another cluster answered.
    OtherCluster { was: u64, now: u64 },
    /// The store's revision went back.
    RevisionBack { was: i64, now: i64 },
    /// The same member answered from an earlier raft term.
    TermBack { member: u64, was: u64, now: u64 },
    /// An answer without a header cannot be placed at all.
    NoHeader,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Break::OtherCluster { was, now } => {
                write!(f, "another etcd cluster answered (id {now}, was {was})")
            }
            Break::RevisionBack { was, now } => write!(
                f,
                "etcd's revision went back from {was} to {now} (restored from a snapshot, or replaced)"
            ),
            Break::TermBack { member, was, now } => write!(
                f,
                "etcd member {member:x} went back from raft term {was} to {now} (restored from a snapshot, or replaced)"
            ),
            Break::NoHeader => write!(f, "etcd answered without a response header"),
        }
    }
}

/// What one connection's answers have shown, from the read of the key on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The latest answer with data.
    latest: Header,
    /// The highest revision any answer showed.
    reached: i64,
}

impl Seen {
    /// Starts from the header of a fresh read of the key.
    pub fn new(read: Header) -> Seen {
        Seen {
            latest: read,
            reached: read.revision,
        }
    }

    pub fn cluster_id(&self) -> u64 {
        self.latest.cluster_id
    }

    /// The revision the connection's data has reached.
    pub fn revision(&self) -> i64 {
        self.latest.revision
    }

    /// The highest revision any answer showed (progress notifications
    /// included): what a later read is compared with.
    pub fn reached(&self) -> i64 {
        self.reached
    }

    /// An answer that carries data (watch events, a canceled watch): checked,
    /// then recorded.
    pub fn data(&mut self, header: Option<Header>) -> Result<(), Break> {
        let header = header.ok_or(Break::NoHeader)?;
        check(&self.latest, &header)?;
        self.latest = header;
        self.reached = self.reached.max(header.revision);
        Ok(())
    }

    /// A progress notification: checked against the data seen, and only
    /// its revision kept. etcd 3.4 may send one with the store's revision
    /// while events below it are still on their way, so a later event's
    /// lower revision is no break.
    pub fn progress(&mut self, header: Option<Header>) -> Result<(), Break> {
        let header = header.ok_or(Break::NoHeader)?;
        check(&self.latest, &header)?;
        self.reached = self.reached.max(header.revision);
        Ok(())
    }
}

/// A fresh read compared with what the grant file came from (`cluster_id`,
/// `revision`), perhaps over another connection or in an earlier run: a
/// read is linearizable, so a lower revision from the same cluster is a
/// history that went back. Only said, never refused: the read is what etcd
/// holds now.
pub fn compare(cluster_id: u64, revision: i64, read: &Header) -> Option<Break> {
    if read.cluster_id != cluster_id {
        Some(Break::OtherCluster {
            was: cluster_id,
            now: read.cluster_id,
        })
    } else if read.revision < revision {
        Some(Break::RevisionBack {
            was: revision,
            now: read.revision,
        })
    } else {
        None
    }
}

fn check(latest: &Header, header: &Header) -> Result<(), Break> {
    if header.cluster_id != latest.cluster_id {
        return Err(Break::OtherCluster {
            was: latest.cluster_id,
            now: header.cluster_id,
        });
    }
    if header.revision < latest.revision {
        return Err(Break::RevisionBack {
            was: latest.revision,
            now: header.revision,
        });
    }
    // Terms differ between members for a moment around an election; only
    // the same member's term is comparable.
    if header.member_id == latest.member_id && header.raft_term < latest.raft_term {
        return Err(Break::TermBack {
            member: header.member_id,
            was: latest.raft_term,
            now: header.raft_term,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const CLUSTER: u64 = 0xcdf8_1819_4e3a_8c32;

    fn at(revision: i64) -> Header {
        Header {
            cluster_id: CLUSTER,
            member_id: 1,
            revision,
            raft_term: 5,
        }
    }

    #[test]
    fn a_history_that_moves_forward_is_accepted() {
        let mut seen = Seen::new(at(32));
        assert_eq!(seen.data(Some(at(33))), Ok(()));
        assert_eq!(seen.progress(Some(at(40))), Ok(()));
        // An event behind a progress notification that ran ahead of it.
        assert_eq!(seen.data(Some(at(34))), Ok(()));
        assert_eq!((seen.revision(), seen.reached()), (34, 40));
        // A new term after an election, and back to the same revision.
        let later = Header {
            raft_term: 6,
            ..at(34)
        };
        assert_eq!(seen.data(Some(later)), Ok(()));
        assert_eq!(seen.progress(Some(later)), Ok(()));
    }

    #[test]
    fn the_issues_restore_is_a_break_for_a_progress_notification_and_an_event() {
        // Synced at 32; the cluster restored to 3 and a revoke written at 4.
        let mut seen = Seen::new(at(32));
        let restored = Break::RevisionBack { was: 32, now: 4 };
        assert_eq!(seen.progress(Some(at(4))), Err(restored.clone()));
        assert_eq!(seen.data(Some(at(4))), Err(restored));
        assert_eq!(
            (seen.revision(), seen.reached()),
            (32, 32),
            "a break is not recorded"
        );
    }

    #[test]
    fn another_cluster_an_earlier_term_and_no_header_are_breaks() {
        let mut seen = Seen::new(at(10));
        let other = Header {
            cluster_id: 7,
            ..at(11)
        };
        assert_eq!(
            seen.data(Some(other)),
            Err(Break::OtherCluster {
                was: CLUSTER,
                now: 7
            })
        );
        let earlier = Header {
            raft_term: 2,
            ..at(11)
        };
        assert!(matches!(
            seen.progress(Some(earlier)),
            Err(Break::TermBack { was: 5, now: 2, .. })
        ));
        // Another member's term is not comparable.
        let elsewhere = Header {
            member_id: 2,
            raft_term: 4,
            ..at(11)
        };
        assert_eq!(seen.data(Some(elsewhere)), Ok(()));
        assert_eq!(seen.data(None), Err(Break::NoHeader));
        assert_eq!(seen.progress(None), Err(Break::NoHeader));
    }

    #[test]
    fn a_fresh_read_says_what_went_back() {
        assert_eq!(compare(CLUSTER, 32, &at(40)), None);
        assert_eq!(compare(CLUSTER, 32, &at(32)), None);
        assert_eq!(
            compare(CLUSTER, 32, &at(3)),
            Some(Break::RevisionBack { was: 32, now: 3 })
        );
        let text = compare(9, 32, &at(40)).unwrap().to_string();
        assert!(text.contains("another etcd cluster"), "{text}");
        assert!(Break::RevisionBack { was: 34, now: 4 }
            .to_string()
            .contains("from 34 to 4"),);
    }
}
