//! Fair shares of the instance slots.
//!
//! One slot per instance of the pool: an execution holds one from before
//! instantiation until its store is dropped. Two rules keep one caller from
//! starving the others:
//!
//! - a caller (a token's `sub`) holds at most its share of the slots at
//!   once; one more is refused at once ([`Error::CallerAtShare`]: 429),
//!   never queued, so a caller's never-ending executions cannot fill the
//!   queue in front of everybody else's;
//! - the wait for a free slot is bounded ([`Error::Overloaded`]: 503): a
//!   host that is full says so instead of letting requests hang.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Error;

pub struct Slots {
    permits: Arc<Semaphore>,
    total: u32,
    /// Slots held per caller; a caller holding none has no entry.
    held: Mutex<HashMap<String, u32>>,
    per_caller: u32,
    wait: Duration,
}

/// A slot, held until dropped.
pub struct Slot<'a> {
    _permit: OwnedSemaphorePermit,
    slots: &'a Slots,
    caller: String,
}

impl Slots {
    /// `total` slots, of which one caller holds at most `share` (at least
    /// one); a free slot is waited for at most `wait`.
    pub fn new(total: u32, share: f64, wait: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
            held: Mutex::new(HashMap::new()),
            per_caller: ((f64::from(total) * share).floor() as u32).clamp(1, total),
            wait,
        }
    }

    /// How many slots one caller may hold at once.
    #[cfg(test)]
    fn per_caller(&self) -> u32 {
        self.per_caller
    }

    /// Slots held right now.
    pub fn in_use(&self) -> usize {
        self.total as usize - self.permits.available_permits()
    }

    /// Takes a slot for `caller`: refused at once beyond the caller's share,
    /// after the bounded wait when every slot stays busy.
    pub async fn acquire(&self, caller: &str) -> Result<Slot<'_>, Error> {
        {
            let mut held = self.held.lock().expect("slot accounting poisoned");
            let count = held.entry(caller.to_owned()).or_insert(0);
            if *count >= self.per_caller {
                return Err(Error::CallerAtShare {
                    share: self.per_caller,
                });
            }
            *count += 1;
        }
        // From here on the count is ours: the guard gives it back however
        // this ends (a refusal, a dropped request).
        let reservation = Reservation {
            slots: self,
            caller: Some(caller.to_owned()),
        };
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await;
        match permit {
            Ok(Ok(permit)) => Ok(Slot {
                _permit: permit,
                slots: self,
                caller: reservation.into_caller(),
            }),
            Ok(Err(closed)) => Err(Error::Internal(closed.into())),
            Err(_) => Err(Error::Overloaded { waited: self.wait }),
        }
    }

    fn release(&self, caller: &str) {
        let mut held = self.held.lock().expect("slot accounting poisoned");
        if let Some(count) = held.get_mut(caller) {
            *count -= 1;
            if *count == 0 {
                held.remove(caller);
            }
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.release(&self.caller);
    }
}

/// A caller's count taken before its slot: given back unless handed on to
/// the [`Slot`].
struct Reservation<'a> {
    slots: &'a Slots,
    caller: Option<String>,
}

impl Reservation<'_> {
    fn into_caller(mut self) -> String {
        self.caller.take().expect("taken once")
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(caller) = &self.caller {
            self.slots.release(caller);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_caller_holds_at_most_its_share_and_gets_it_back() {
        let slots = Slots::new(8, 0.25, Duration::from_millis(50));
        assert_eq!(slots.per_caller(), 2);
        let a1 = slots.acquire("a").await.unwrap();
        let _a2 = slots.acquire("a").await.unwrap();
        assert!(matches!(
            slots.acquire("a").await,
            Err(Error::CallerAtShare { share: 2 })
        ));
        // Others are not affected.
        let _b = slots.acquire("b").await.unwrap();
        drop(a1);
        let _a3 = slots.acquire("a").await.unwrap();
        assert_eq!(slots.in_use(), 3);
    }

    #[tokio::test]
    async fn the_wait_for_a_slot_is_bounded_and_leaves_no_count_behind() {
        let slots = Slots::new(2, 1.0, Duration::from_millis(50));
        let _x = slots.acquire("x").await.unwrap();
        let _y = slots.acquire("y").await.unwrap();
        assert!(matches!(
            slots.acquire("z").await,
            Err(Error::Overloaded { .. })
        ));
        assert!(!slots.held.lock().unwrap().contains_key("z"));
    }

    #[test]
    fn every_caller_gets_at_least_one_slot() {
        assert_eq!(Slots::new(2, 0.25, Duration::ZERO).per_caller(), 1);
        assert_eq!(Slots::new(64, 0.25, Duration::ZERO).per_caller(), 16);
        assert_eq!(Slots::new(4, 5.0, Duration::ZERO).per_caller(), 4);
    }
}
