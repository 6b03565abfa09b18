//! Loom model of log space reservation (`src/wal/reserve.rs`), running the
//! engine's own `Cursor` through the `sync` shim: the loop of
//! `Wal::reserve` (attempt, seal the tail of a full segment, try again in
//! the next) on two writers, and the sync marker's `claim_in_segment` on a
//! third thread, across a segment boundary.
//!
//! Run: RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!      cargo test --release --test loom_reserve
#![cfg(loom)]

use dtc::__loom::{Claim, Cursor};
use loom::sync::{Arc, Mutex};
use loom::thread;

const SEGMENT: u64 = 32;
/// The cursor starts inside segment 0 so that the writers meet the boundary.
const START: u64 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Record,
    Seal,
    Marker,
}

type Claims = Arc<Mutex<Vec<(u64, u64, Kind)>>>;

/// `Wal::reserve`'s loop: returns once a record is claimed.
fn reserve(cursor: &Cursor, size: u64, claims: &Claims) {
    loop {
        match cursor.attempt(size, |_| Ok::<(), ()>(())).unwrap() {
            Some(Claim::Record { start }) => {
                claims.lock().unwrap().push((start, start + size, Kind::Record));
                return;
            }
            Some(Claim::Seal { start, end }) => claims.lock().unwrap().push((start, end, Kind::Seal)),
            None => {}
        }
    }
}

fn model(make: fn() -> Cursor) {
    loom::model(move || {
        let cursor = Arc::new(make());
        let claims: Claims = Arc::new(Mutex::new(Vec::new()));
        let writers: Vec<_> = [16u64, 24]
            .into_iter()
            .map(|size| {
                let (cursor, claims) = (cursor.clone(), claims.clone());
                thread::spawn(move || reserve(&cursor, size, &claims))
            })
            .collect();
        let marker = {
            let (cursor, claims) = (cursor.clone(), claims.clone());
            thread::spawn(move || {
                if let Some(start) = cursor.claim_in_segment(8, |_| true) {
                    claims.lock().unwrap().push((start, start + 8, Kind::Marker));
                }
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        marker.join().unwrap();

        let mut claims = claims.lock().unwrap().clone();
        claims.sort();
        assert_eq!(
            claims.iter().filter(|c| c.2 == Kind::Record).count(),
            2,
            "each writer claimed one record: {claims:?}"
        );
        let mut next = START;
        let mut sealed = Vec::new();
        for &(start, end, kind) in &claims {
            assert!(start >= next, "claims overlap: {claims:?}");
            assert_eq!(start, next, "a gap in the log: {claims:?}");
            assert!(start < end);
            match kind {
                Kind::Seal => {
                    assert_eq!(end % SEGMENT, 0, "a seal ends at a segment boundary: {claims:?}");
                    assert!(!sealed.contains(&(end / SEGMENT)), "a segment sealed twice: {claims:?}");
                    sealed.push(end / SEGMENT);
                }
                Kind::Record | Kind::Marker => {
                    assert_eq!(start / SEGMENT, (end - 1) / SEGMENT, "a record crosses a boundary: {claims:?}")
                }
            }
            next = end;
        }
        assert_eq!(cursor.position(), next, "the cursor is the end of the last claim");
    });
}

#[test]
fn racing_writers_and_a_marker_claim_disjoint_ranges_without_gaps() {
    model(|| Cursor::new(START, SEGMENT));
}

#[test]
#[should_panic(expected = "claims overlap")]
fn a_cursor_without_compare_and_swap_is_caught() {
    model(|| Cursor::broken(START, SEGMENT));
}
