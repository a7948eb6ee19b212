//! The host-wide budget every pool draws on: how many instances may exist at once across
//! all functions, and how much memory their limits may add up to.
//!
//! A pool takes a [`Ticket`] before it launches an instance and keeps it in the instance's
//! slot; dropping the slot (the process exited, or its start failed) gives it back. A
//! burst that finds the budget spent waits in its pool's bounded queue, and the pool
//! retries on its next housekeeping tick. A refusal also raises a pressure flag: while it
//! is up, every pool gives back its idle instances (above `min_instances`) without waiting
//! for their idle timeout, so one function's idle capacity never starves another's work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Limits for the whole host. `u64::MAX` / `u32::MAX` mean unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimits {
    pub max_instances: u32,
    /// Sum of the instances' memory limits, in KiB.
    pub max_memory_kib: u64,
}

impl BudgetLimits {
    pub const UNBOUNDED: BudgetLimits = BudgetLimits {
        max_instances: u32::MAX,
        max_memory_kib: u64::MAX,
    };
}

/// What is in use now, for `shoal status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStatus {
    pub instances: u32,
    pub max_instances: u32,
    pub memory_kib: u64,
    pub max_memory_kib: u64,
}

#[derive(Debug, Default)]
struct Used {
    instances: u32,
    memory_kib: u64,
}

/// Shared by every pool of one dispatcher.
#[derive(Debug)]
pub struct HostBudget {
    limits: BudgetLimits,
    used: Mutex<Used>,
    /// A launch was refused and no launch has succeeded since.
    pressure: AtomicBool,
}

/// Which bound of the host budget refused a launch, with the figures at the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetRefusal {
    /// Every instance the host allows is in use.
    #[error("host budget: {in_use} of {max_instances} instances in use")]
    Instances { in_use: u32, max_instances: u32 },
    /// The new instance's memory limit does not fit beside the ones in use.
    #[error(
        "host budget: {} MiB of {} MiB of instance memory in use, {} MiB more does not fit",
        in_use_kib / 1024,
        max_memory_kib / 1024,
        requested_kib / 1024
    )]
    Memory {
        in_use_kib: u64,
        max_memory_kib: u64,
        requested_kib: u64,
    },
}

impl HostBudget {
    pub fn new(limits: BudgetLimits) -> Arc<HostBudget> {
        Arc::new(HostBudget {
            limits,
            used: Mutex::new(Used::default()),
            pressure: AtomicBool::new(false),
        })
    }

    /// Reserve one instance with `memory_kib` of memory limit, or say which bound is hit.
    pub fn try_take(self: &Arc<Self>, memory_kib: u64) -> Result<Ticket, BudgetRefusal> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let refusal = if used.instances >= self.limits.max_instances {
            Some(BudgetRefusal::Instances {
                in_use: used.instances,
                max_instances: self.limits.max_instances,
            })
        } else if used.memory_kib.saturating_add(memory_kib) > self.limits.max_memory_kib {
            Some(BudgetRefusal::Memory {
                in_use_kib: used.memory_kib,
                max_memory_kib: self.limits.max_memory_kib,
                requested_kib: memory_kib,
            })
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.pressure.store(true, Ordering::Relaxed);
            return Err(refusal);
        }
        self.pressure.store(false, Ordering::Relaxed);
        used.instances += 1;
        used.memory_kib += memory_kib;
        Ok(Ticket {
            budget: self.clone(),
            memory_kib,
        })
    }

    /// Reserve room for a spare (a warm-pool process): only while one more instance of
    /// the same size would still fit beside it, so spares never take the last room. A
    /// refusal raises no pressure, and a success lowers none: spares are not demand.
    pub fn try_take_spare(self: &Arc<Self>, memory_kib: u64) -> Option<Ticket> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let fits = used.instances.saturating_add(2) <= self.limits.max_instances
            && used.memory_kib.saturating_add(memory_kib.saturating_mul(2))
                <= self.limits.max_memory_kib;
        if !fits {
            return None;
        }
        used.instances += 1;
        used.memory_kib += memory_kib;
        Some(Ticket {
            budget: self.clone(),
            memory_kib,
        })
    }

    /// Some pool is waiting for room: idle instances elsewhere should be given back.
    pub fn under_pressure(&self) -> bool {
        self.pressure.load(Ordering::Relaxed)
    }

    /// Answer the pressure by freeing one instance: lowers the flag, so each refusal
    /// reclaims one idle instance, not every idle instance on the host.
    pub fn relieve(&self) -> bool {
        self.pressure.swap(false, Ordering::Relaxed)
    }

    pub fn status(&self) -> BudgetStatus {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        BudgetStatus {
            instances: used.instances,
            max_instances: self.limits.max_instances,
            memory_kib: used.memory_kib,
            max_memory_kib: self.limits.max_memory_kib,
        }
    }
}

/// One instance's share of the budget; given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    budget: Arc<HostBudget>,
    memory_kib: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        used.instances -= 1;
        used.memory_kib -= self.memory_kib;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_count_bound_refuses_then_frees() {
        let budget = HostBudget::new(BudgetLimits {
            max_instances: 2,
            max_memory_kib: u64::MAX,
        });
        let a = budget.try_take(1024).unwrap();
        let _b = budget.try_take(1024).unwrap();
        let refused = budget.try_take(1024).unwrap_err();
        assert_eq!(
            refused,
            BudgetRefusal::Instances {
                in_use: 2,
                max_instances: 2
            }
        );
        assert_eq!(refused.to_string(), "host budget: 2 of 2 instances in use");
        assert!(budget.under_pressure());
        drop(a);
        assert!(budget.try_take(1024).is_ok());
        assert!(!budget.under_pressure());
    }

    #[test]
    fn memory_bound_counts_each_instance_limit() {
        let budget = HostBudget::new(BudgetLimits {
            max_instances: 100,
            max_memory_kib: 1024 * 1024,
        });
        let _big = budget.try_take(768 * 1024).unwrap();
        let refused = budget.try_take(512 * 1024).unwrap_err();
        assert_eq!(
            refused,
            BudgetRefusal::Memory {
                in_use_kib: 768 * 1024,
                max_memory_kib: 1024 * 1024,
                requested_kib: 512 * 1024
            }
        );
        assert_eq!(
            refused.to_string(),
            "host budget: 768 MiB of 1024 MiB of instance memory in use, 512 MiB more does not fit"
        );
        let small = budget.try_take(256 * 1024).unwrap();
        assert_eq!(budget.status().memory_kib, 1024 * 1024);
        drop(small);
        assert_eq!(budget.status().instances, 1);
        assert_eq!(budget.status().memory_kib, 768 * 1024);
    }
}
