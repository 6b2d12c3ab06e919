//! peercam patch (not in the published crate): the `SystemTime` this crate measures elapsed time
//! with, taken from a clock that does not step. See PEERCAM-PATCH.md at the crate's root.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

/// The wall-clock time at the first call, advanced by the monotonic clock since. Used where the
/// crate compares two of its own timestamps: an NTP step of the wall clock (days, on a device
/// without a real-time clock) must not read as days of silence, nor as time running backwards.
pub(crate) fn now() -> SystemTime {
    static ANCHOR: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    let (at, wall) = *ANCHOR.get_or_init(|| (Instant::now(), SystemTime::now()));
    wall + at.elapsed()
}
