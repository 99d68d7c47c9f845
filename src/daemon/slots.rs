//! Control-socket connection slots: at most so many connections at once,
//! and at most so many per uid, so no local user can hold the daemon's
//! descriptors (enforcement needs them) or every slot (other users' CLI
//! needs one). A connection over either cap is refused at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// How many control connections may be open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// All uids together, root aside; root alone may hold as many again.
    /// Root is not counted here, so other users together cannot lock the
    /// operator out.
    pub total: usize,
    /// Any one uid but root.
    pub per_uid: usize,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot is taken.
    Full,
    /// The caller's uid holds its share already.
    UidFull,
}

impl Refused {
    pub fn message(self) -> &'static str {
        match self {
            Refused::Full => "the daemon has too many control connections; try again",
            Refused::UidFull => "too many control connections from your user; try again",
        }
    }
}

/// The slots taken, by uid.
#[derive(Debug)]
pub struct Slots {
    caps: Caps,
    total: usize,
    by_uid: HashMap<u32, usize>,
}

impl Slots {
    pub fn new(caps: Caps) -> Self {
        Slots {
            caps,
            total: 0,
            by_uid: HashMap::new(),
        }
    }

    /// Takes a slot for `uid`, or says why not.
    pub fn take(&mut self, uid: u32) -> Result<(), Refused> {
        let mine = self.by_uid.get(&uid).copied().unwrap_or(0);
        let share = if uid == 0 {
            self.caps.total
        } else {
            self.caps.per_uid
        };
        if mine >= share {
            return Err(Refused::UidFull);
        }
        if uid != 0 && self.total >= self.caps.total {
            return Err(Refused::Full);
        }
        self.by_uid.insert(uid, mine + 1);
        if uid != 0 {
            self.total += 1;
        }
        Ok(())
    }

    /// Gives back a slot `uid` took.
    pub fn give_back(&mut self, uid: u32) {
        match self.by_uid.get_mut(&uid) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.by_uid.remove(&uid);
            }
            None => return,
        }
        if uid != 0 {
            self.total = self.total.saturating_sub(1);
        }
    }

    /// Slots taken by everyone but root.
    #[cfg(test)]
    pub fn taken(&self) -> usize {
        self.total
    }
}

/// [`Slots`] shared by the accept loop and the connections' tasks.
#[derive(Debug, Clone)]
pub struct Shared(Arc<Mutex<Slots>>);

/// One taken slot; dropping it (when the connection ends) gives it back.
#[derive(Debug)]
pub struct Slot {
    slots: Shared,
    uid: u32,
}

impl Shared {
    pub fn new(caps: Caps) -> Self {
        Shared(Arc::new(Mutex::new(Slots::new(caps))))
    }

    pub fn take(&self, uid: u32) -> Result<Slot, Refused> {
        self.lock().take(uid)?;
        Ok(Slot {
            slots: self.clone(),
            uid,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        // The counts stay consistent whatever panicked while holding them.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().give_back(self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        total: 5,
        per_uid: 2,
    };

    #[test]
    fn one_uid_gets_its_share_and_no_more() {
        let mut slots = Slots::new(CAPS);
        assert_eq!(slots.take(1000), Ok(()));
        assert_eq!(slots.take(1000), Ok(()));
        assert_eq!(slots.take(1000), Err(Refused::UidFull));
        // Others still get in.
        assert_eq!(slots.take(1001), Ok(()));
        slots.give_back(1000);
        assert_eq!(slots.take(1000), Ok(()));
        assert_eq!(slots.taken(), 3);
    }

    #[test]
    fn all_uids_together_stop_at_the_total_but_root_still_gets_in() {
        let mut slots = Slots::new(CAPS);
        for uid in [1, 1, 2, 2, 3] {
            assert_eq!(slots.take(uid), Ok(()));
        }
        assert_eq!(slots.take(4), Err(Refused::Full));
        for _ in 0..5 {
            assert_eq!(slots.take(0), Ok(()));
        }
        assert_eq!(slots.take(0), Err(Refused::UidFull));
        assert_eq!(slots.taken(), 5);
        slots.give_back(0);
        assert_eq!(slots.taken(), 5, "root's slots are not in the total");
        slots.give_back(3);
        assert_eq!(slots.take(4), Ok(()));
    }

    #[test]
    fn giving_back_what_was_never_taken_changes_nothing() {
        let mut slots = Slots::new(CAPS);
        slots.give_back(7);
        assert_eq!(slots.taken(), 0);
        assert_eq!(slots.take(7), Ok(()));
        slots.give_back(7);
        slots.give_back(7);
        assert_eq!(slots.taken(), 0);
    }

    #[test]
    fn a_dropped_slot_is_given_back() {
        let shared = Shared::new(Caps {
            total: 1,
            per_uid: 1,
        });
        let slot = shared.take(1000);
        assert!(slot.is_ok());
        assert_eq!(shared.take(1001).err(), Some(Refused::Full));
        drop(slot);
        assert!(shared.take(1001).is_ok());
        assert_eq!(shared.lock().taken(), 0);
    }
}
