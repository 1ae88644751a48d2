//! The upload memory budget: request bodies are held in memory while they are read and checked
//! (a key is up to 28 MB), so the bytes all uploads may hold at once are capped. An upload
//! reserves its declared size (or its object's limit) before reading; when the budget stays full
//! for `wait`, the client gets 503 with `Retry-After` instead of the server growing without
//! bound under many clients at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::error::ApiError;

/// Reservations are counted in KiB so that budgets of terabytes fit the semaphore's `u32`.
const UNIT: u64 = 1024;

pub struct UploadBudget {
    permits: Arc<Semaphore>,
    total: u32,
}

/// A reservation, given back when dropped.
pub struct Reservation(#[allow(dead_code)] OwnedSemaphorePermit);

impl UploadBudget {
    pub fn new(bytes: u64) -> Self {
        let total = (bytes / UNIT).clamp(1, u32::MAX as u64 >> 4) as u32;
        Self {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// The budget in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total as u64 * UNIT
    }

    /// Bytes reserved now.
    pub fn reserved_bytes(&self) -> u64 {
        (self.total as u64 - self.permits.available_permits() as u64) * UNIT
    }

    /// Reserves `bytes` (at most the whole budget), waiting up to `wait` for room.
    pub async fn reserve(&self, bytes: usize, wait: Duration) -> Result<Reservation, ApiError> {
        let units = (bytes as u64).div_ceil(UNIT).clamp(1, self.total as u64) as u32;
        match tokio::time::timeout(wait, self.permits.clone().acquire_many_owned(units)).await {
            Ok(Ok(permit)) => Ok(Reservation(permit)),
            _ => Err(ApiError::busy(
                "uploads_busy",
                format!(
                    "the server is receiving as many uploads as its memory allows ({} MB); \
                     try again shortly",
                    self.total_bytes() >> 20
                ),
                5,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_room_and_time_out() {
        let budget = UploadBudget::new(10 * UNIT);
        let a = budget
            .reserve(6 * 1024, Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(budget.reserved_bytes(), 6 * UNIT);
        // 6 + 6 > 10: refused after the wait
        let e = budget
            .reserve(6 * 1024, Duration::from_millis(20))
            .await
            .err()
            .unwrap();
        assert_eq!((e.status.as_u16(), e.code), (503, "uploads_busy"));
        assert!(e.retry_after.is_some());
        // a body larger than the budget reserves all of it, once the first is given back
        drop(a);
        let b = budget
            .reserve(1 << 30, Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(budget.reserved_bytes(), budget.total_bytes());
        drop(b);
        assert_eq!(budget.reserved_bytes(), 0);
    }
}
