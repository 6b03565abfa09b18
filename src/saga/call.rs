//! Calling user closures safely: panics are caught, and a call with a
//! timeout runs on its own thread so the caller can stop waiting for it.
//! Threads left behind by timed-out calls are bounded.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::sync::{AtomicUsize, Ordering};

/// Calls running on their own threads, per counter, at most. A call past
/// this fails at once ("overloaded") and is retried like any failure.
pub(crate) const MAX_CALLS_IN_FLIGHT: usize = 256;

/// How a guarded call ended without a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// The closure panicked; the message if it was text.
    Panicked(String),
    /// No answer within the timeout; the call may still take effect later.
    TimedOut,
    /// Too many calls in flight, or the thread could not be started.
    Overloaded(String),
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-text panic payload".to_string()
    }
}

/// Runs `call` on this thread, catching a panic.
pub(crate) fn call_inline<T>(call: impl FnOnce() -> T) -> Result<T, CallError> {
    catch_unwind(AssertUnwindSafe(call)).map_err(|payload| CallError::Panicked(panic_message(&*payload)))
}

/// A call started on its own thread.
pub(crate) struct PendingCall<T> {
    answer: Receiver<Result<T, String>>,
}

struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        // Relaxed: a counter bounding thread count; nothing is published through it.
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts `call` on a new thread. If the caller has stopped waiting when the
/// call returns a value, `on_late` gets that value (on the call's thread):
/// e.g. to roll back a prepare that answered after its timeout.
pub(crate) fn spawn_call<T, F, L>(
    thread_name: String,
    in_flight: &Arc<AtomicUsize>,
    call: F,
    on_late: L,
) -> Result<PendingCall<T>, CallError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
    L: FnOnce(T) + Send + 'static,
{
    // Relaxed: see `InFlight`.
    let before = in_flight.fetch_add(1, Ordering::Relaxed);
    let guard = InFlight(Arc::clone(in_flight));
    if before >= MAX_CALLS_IN_FLIGHT {
        return Err(CallError::Overloaded(format!("{before} calls already in flight")));
    }
    let (sender, answer) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let _guard = guard;
            let result = catch_unwind(AssertUnwindSafe(call)).map_err(|payload| panic_message(&*payload));
            if let Err(crossbeam_channel::SendError(Ok(value))) = sender.send(result) {
                on_late(value);
            }
        })
        .map_err(|e| CallError::Overloaded(format!("cannot start a thread: {e}")))?;
    Ok(PendingCall { answer })
}

impl<T> PendingCall<T> {
    /// Waits until `deadline`; on timeout the call is abandoned (its value,
    /// if it ever comes, goes to `on_late`).
    pub(crate) fn wait_until(self, deadline: Instant) -> Result<T, CallError> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.answer.recv_timeout(wait) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(CallError::Panicked(message)),
            Err(RecvTimeoutError::Timeout) => Err(CallError::TimedOut),
            Err(RecvTimeoutError::Disconnected) => {
                Err(CallError::Panicked("the call's thread ended without answering".into()))
            }
        }
    }
}

/// Runs `call` with a timeout (on its own thread) or inline when `timeout`
/// is `None`.
pub(crate) fn call_with_timeout<T, F>(
    thread_name: impl FnOnce() -> String,
    timeout: Option<Duration>,
    in_flight: &Arc<AtomicUsize>,
    call: F,
) -> Result<T, CallError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match timeout {
        None => call_inline(call),
        Some(timeout) => {
            let deadline = Instant::now() + timeout;
            spawn_call(thread_name(), in_flight, call, drop)?.wait_until(deadline)
        }
    }
}
