//! Sagas: ordering, retries, deadlines, idempotency, crash resume, stuck
//! compensations, parallel groups. Time is a `ManualClock`: no test sleeps
//! for backoff.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use dtc::saga::{
    IdempotencyKey, ManualClock, MemoryLog, SagaDefinition, SagaExecutor, SagaExecutorBuilder, SagaState, Step,
    StepContext, StepError,
};
use dtc::{Jitter, RetryPolicy};

/// The outside world the steps act on: it applies each key once, like a
/// service deduplicating by idempotency key.
#[derive(Default)]
struct World {
    applied: HashSet<String>,
    /// Effects, in the order they happened (`do:x`, `undo:x`).
    events: Vec<String>,
    /// Every call's key, duplicates included.
    calls: Vec<String>,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<World>>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn apply(&self, label: String, key: &IdempotencyKey) {
        let mut world = self.lock();
        world.calls.push(key.to_string());
        if world.applied.insert(key.to_string()) {
            world.events.push(label);
        }
    }
    fn act(&self, cx: &StepContext<'_, u32>) {
        self.apply(format!("do:{}", cx.step()), cx.key());
    }
    /// Undoes only what was done. A compensation for an action that has not
    /// taken effect leaves a tombstone instead, so that the action, should
    /// it still arrive (it timed out but kept running), has no effect.
    fn undo(&self, cx: &StepContext<'_, u32>) {
        let mut world = self.lock();
        if world.applied.contains(cx.action_key().as_str()) {
            drop(world);
            self.apply(format!("undo:{}", cx.step()), cx.key());
        } else {
            world.applied.insert(cx.action_key().to_string());
            world.calls.push(cx.key().to_string());
        }
    }
    fn events(&self) -> Vec<String> {
        self.lock().events.clone()
    }
    fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }
}

fn step(world: &Shared, name: &str) -> Step<u32> {
    let a = world.clone();
    Step::new(name, move |cx| {
        a.act(cx);
        Ok(())
    })
    .compensate(undo(world))
    .no_timeout()
}

/// The standard compensation: undo what the action did in `world`.
fn undo(world: &Shared) -> impl Fn(&StepContext<'_, u32>) -> Result<(), StepError> + Send + Sync + 'static {
    let w = world.clone();
    move |cx| {
        w.undo(cx);
        Ok(())
    }
}

fn failing_step(world: &Shared, name: &str) -> Step<u32> {
    let (a, b) = (world.clone(), world.clone());
    Step::new(name, move |cx: &StepContext<'_, u32>| {
        a.lock().calls.push(cx.key().to_string());
        Err(StepError::permanent("declined"))
    })
    .compensate(move |cx| {
        b.undo(cx);
        Ok(())
    })
    .no_timeout()
}

fn clock() -> ManualClock {
    ManualClock::default()
}

fn executor(clock: &ManualClock) -> SagaExecutorBuilder {
    SagaExecutor::builder().clock(Arc::new(clock.clone())).seed(7).compensation_retry(
        RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(100), 4).with_jitter(Jitter::Full),
    )
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn completes_steps_in_order() {
    let world = Shared::default();
    let def = SagaDefinition::builder("three")
        .step(step(&world, "a"))
        .step(step(&world, "b"))
        .step(step(&world, "c"))
        .build()
        .unwrap();
    let clock = clock();
    let exec = executor(&clock).open().unwrap();
    let info = exec.run(&def, &1).unwrap();
    assert_eq!(info.state, SagaState::Completed);
    assert_eq!(info.completed_steps, strings(&["a", "b", "c"]));
    assert_eq!(world.events(), strings(&["do:a", "do:b", "do:c"]));
    let m = exec.metrics();
    assert_eq!((m.started, m.completed, m.open, m.step_attempts), (1, 1, 0, 3));
}

#[test]
fn compensations_run_in_reverse_order_of_completion() {
    let world = Shared::default();
    // `slow` finishes after `fast` although it is declared first.
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let (w, g) = (world.clone(), gate.clone());
    let slow = Step::new("slow", move |cx: &StepContext<'_, u32>| {
        let (lock, cv) = &*g;
        let guard = lock.lock().unwrap();
        let _ = cv.wait_timeout_while(guard, Duration::from_secs(5), |fast_done| !*fast_done).unwrap();
        w.act(cx);
        Ok(())
    })
    .compensate(undo(&world))
    .no_timeout();
    let (w, g) = (world.clone(), gate.clone());
    let fast = Step::new("fast", move |cx: &StepContext<'_, u32>| {
        w.act(cx);
        let (lock, cv) = &*g;
        *lock.lock().unwrap() = true;
        cv.notify_all();
        Ok(())
    })
    .compensate(undo(&world))
    .no_timeout();
    let def = SagaDefinition::builder("reverse")
        .step(step(&world, "a"))
        .parallel([slow, fast])
        .step(step(&world, "b"))
        .step(failing_step(&world, "pay"))
        .step(step(&world, "never"))
        .build()
        .unwrap();
    let clock = clock();
    let exec = executor(&clock).open().unwrap();
    let info = exec.run(&def, &1).unwrap();
    assert_eq!(info.state, SagaState::Compensated);
    // Completion order is the order of the Done records: `slow` acts after
    // `fast`, but which of the two parallel threads records first is up to the
    // scheduler. The property under test: compensations run in the exact
    // reverse of the recorded completion order.
    let done = &info.completed_steps;
    assert_eq!((done.len(), done[0].as_str(), done[3].as_str()), (4, "a", "b"), "{done:?}");
    assert!(info.failure.as_deref().unwrap_or("").contains("pay"), "{info:?}");
    let events = world.events();
    assert_eq!(events[..4], strings(&["do:a", "do:fast", "do:slow", "do:b"]));
    let undone: Vec<String> = events[4..].iter().map(|e| e.trim_start_matches("undo:").to_string()).collect();
    let reversed: Vec<String> = done.iter().rev().cloned().collect();
    assert_eq!(undone, reversed, "compensations not in reverse completion order");
    assert_eq!(info.compensated_steps, 4);
}

#[test]
fn retries_back_off_with_full_jitter_within_the_policy() {
    let world = Shared::default();
    let policy = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(60), 6).with_jitter(Jitter::Full);
    let failures = Arc::new(AtomicU32::new(0));
    let keys = Arc::new(Mutex::new(Vec::new()));
    let (f, k, w) = (failures.clone(), keys.clone(), world.clone());
    let flaky = Step::new("flaky", move |cx: &StepContext<'_, u32>| {
        k.lock().unwrap().push((cx.key().to_string(), cx.attempt()));
        if f.fetch_add(1, Ordering::SeqCst) < 5 {
            return Err(StepError::retryable("busy"));
        }
        w.act(cx);
        Ok(())
    })
    .retry(policy.clone())
    .no_timeout();
    let def = SagaDefinition::builder("flaky").step(flaky).build().unwrap();
    let clock = clock();
    let exec = executor(&clock).open().unwrap();
    assert_eq!(exec.run(&def, &1).unwrap().state, SagaState::Completed);

    let keys = keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 6, "max_attempts calls");
    assert!(keys.iter().all(|(key, _)| *key == keys[0].0), "the key is stable across retries");
    assert_eq!(keys.iter().map(|(_, a)| *a).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
    let sleeps = clock.take_sleeps();
    assert_eq!(sleeps.len(), 5);
    for (retry, sleep) in sleeps.iter().enumerate() {
        assert!(
            *sleep <= policy.delay(retry as u32 + 1),
            "retry {retry}: {sleep:?} > {:?}",
            policy.delay(retry as u32 + 1)
        );
    }
    assert_eq!(exec.metrics().step_retries, 5);

    // Every attempt failing: exactly max_attempts calls, then compensation.
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let always = Step::new("always", move |_: &StepContext<'_, u32>| {
        c.fetch_add(1, Ordering::SeqCst);
        Err(StepError::retryable("down"))
    })
    .retry(RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(4), 3).with_jitter(Jitter::Full))
    .no_timeout();
    let def = SagaDefinition::builder("down").step(step(&world, "first")).step(always).build().unwrap();
    let info = exec.run(&def, &2).unwrap();
    assert_eq!(info.state, SagaState::Compensated);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(info.failure.unwrap().contains("3 attempt"));
}

#[test]
fn jitter_spreads_delays_below_the_ceiling() {
    let policy = RetryPolicy::new(Duration::from_millis(100), Duration::from_millis(100), 50).with_jitter(Jitter::Full);
    let def = SagaDefinition::builder("jitter")
        .step(Step::new("x", |_: &StepContext<'_, u32>| Err(StepError::retryable("no"))).retry(policy).no_timeout())
        .build()
        .unwrap();
    let clock = clock();
    let exec = executor(&clock).open().unwrap();
    exec.run(&def, &1).unwrap();
    let sleeps = clock.take_sleeps();
    assert_eq!(sleeps.len(), 49);
    assert!(sleeps.iter().all(|s| *s <= Duration::from_millis(100)));
    let distinct: HashSet<_> = sleeps.iter().collect();
    assert!(distinct.len() > 40, "delays are drawn, not fixed: {sleeps:?}");
}

#[test]
fn a_passed_deadline_compensates() {
    let clock = clock();
    let world = Shared::default();
    // The deadline passes while `slow` is retrying.
    let c = clock.clone();
    let slow = Step::new("slow", move |_: &StepContext<'_, u32>| {
        c.advance(Duration::from_secs(2));
        Err(StepError::retryable("later"))
    })
    .retry(RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(1), 100).with_jitter(Jitter::Full))
    .no_timeout();
    let def = SagaDefinition::builder("deadline")
        .deadline(Duration::from_secs(1))
        .step(step(&world, "a"))
        .step(slow)
        .step(step(&world, "never"))
        .build()
        .unwrap();
    let exec = executor(&clock).open().unwrap();
    let info = exec.run(&def, &1).unwrap();
    assert_eq!(info.state, SagaState::Compensated);
    assert!(info.failure.unwrap().contains("deadline"));
    assert_eq!(world.events(), strings(&["do:a", "undo:a"]));

    // The deadline passes between steps.
    let world = Shared::default();
    let (c, w) = (clock.clone(), world.clone());
    let long = Step::new("long", move |cx: &StepContext<'_, u32>| {
        w.act(cx);
        c.advance(Duration::from_secs(5));
        Ok(())
    })
    .compensate(undo(&world))
    .no_timeout();
    let def = SagaDefinition::builder("between")
        .deadline(Duration::from_secs(1))
        .step(long)
        .step(step(&world, "never"))
        .build()
        .unwrap();
    let info = exec.run(&def, &1).unwrap();
    assert_eq!(info.state, SagaState::Compensated);
    assert_eq!(world.events(), strings(&["do:long", "undo:long"]));
    assert_eq!(exec.metrics().deadlines_exceeded, 1);
}

#[test]
fn duplicate_deliveries_have_one_effect() {
    let world = Shared::default();
    let def = SagaDefinition::builder("dup")
        .step(step(&world, "a"))
        .parallel([step(&world, "b"), step(&world, "c")])
        .step(failing_step(&world, "d"))
        .build()
        .unwrap();
    let clock = clock();
    let exec = executor(&clock).redeliver_for_testing(2).open().unwrap();
    let info = exec.run(&def, &1).unwrap();
    assert_eq!(info.state, SagaState::Compensated);
    let events = world.events();
    assert_eq!(events.len(), 6, "{events:?}");
    // Each action and compensation was delivered three times, same key.
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for key in world.calls() {
        *per_key.entry(key).or_default() += 1;
    }
    for step in ["a", "b", "c"] {
        assert_eq!(per_key[&format!("{}/{step}/action", info.id)], 3);
        assert_eq!(per_key[&format!("{}/{step}/compensate", info.id)], 3);
    }
}

#[test]
fn timeouts_and_panics_are_failed_attempts() {
    let world = Shared::default();
    let first = Arc::new(AtomicBool::new(true));
    let (f, w) = (first.clone(), world.clone());
    let slow_once = Step::new("slow_once", move |cx: &StepContext<'_, u32>| {
        if f.swap(false, Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(300));
        }
        w.act(cx);
        Ok(())
    })
    .timeout(Duration::from_millis(30))
    .retry(RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(1), 3).with_jitter(Jitter::Full));
    let panicked = Arc::new(AtomicBool::new(false));
    let (p, w) = (panicked.clone(), world.clone());
    let panics_once = Step::new("panics_once", move |cx: &StepContext<'_, u32>| {
        if !p.swap(true, Ordering::SeqCst) {
            panic!("injected panic");
        }
        w.act(cx);
        Ok(())
    })
    .retry(RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(1), 3).with_jitter(Jitter::Full));
    let def = SagaDefinition::builder("flaky-calls").step(slow_once).step(panics_once).build().unwrap();
    let clock = clock();
    let exec = executor(&clock).open().unwrap();
    let info = exec.run(&def, &1).unwrap();
    assert_eq!(info.state, SagaState::Completed);
    let m = exec.metrics();
    assert_eq!((m.timeouts, m.panics, m.step_attempts), (1, 1, 4));
    // The timed-out first attempt finishes later with the same key: one effect.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(world.events(), strings(&["do:slow_once", "do:panics_once"]));

    // A step that only times out fails for good, and is compensated because
    // its attempts may have taken effect.
    let world = Shared::default();
    let w = world.clone();
    let hangs = Step::new("hangs", move |cx: &StepContext<'_, u32>| {
        std::thread::sleep(Duration::from_millis(100));
        w.act(cx);
        Ok(())
    })
    .compensate(undo(&world))
    .timeout(Duration::from_millis(10))
    .retry(RetryPolicy::once());
    let def = SagaDefinition::builder("hangs").step(step(&world, "a")).step(hangs).build().unwrap();
    let info = exec.run(&def, &1).unwrap();
    assert_eq!(info.state, SagaState::Compensated);
    assert!(world.calls().iter().any(|k| k.ends_with("hangs/compensate")), "{:?}", world.calls());
    // The abandoned call lands after its compensation: the tombstone stops it.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(world.events(), strings(&["do:a", "undo:a"]));
}

#[test]
fn a_compensation_that_keeps_failing_makes_the_saga_stuck() {
    let world = Shared::default();
    let fixed = Arc::new(AtomicBool::new(false));
    let (w, f) = (world.clone(), fixed.clone());
    let reserve = Step::new("reserve", {
        let w = world.clone();
        move |cx: &StepContext<'_, u32>| {
            w.act(cx);
            Ok(())
        }
    })
    .compensate(move |cx| {
        if !f.load(Ordering::SeqCst) {
            return Err(StepError::retryable("warehouse offline"));
        }
        w.undo(cx);
        Ok(())
    })
    .no_timeout();
    let def = SagaDefinition::builder("stuck").step(reserve).step(failing_step(&world, "pay")).build().unwrap();
    let log = MemoryLog::new();
    let clock = clock();
    let exec = executor(&clock).memory_log(log.clone()).open().unwrap();
    let info = exec.run(&def, &1).unwrap();
    assert_eq!(info.state, SagaState::Stuck);
    assert!(info.failure.as_deref().unwrap_or("").contains("reserve"), "{info:?}");
    let listed = exec.sagas();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, SagaState::Stuck);
    let m = exec.metrics();
    assert_eq!((m.stuck, m.stuck_events, m.open, m.compensation_attempts), (1, 1, 1, 4));
    drop(exec);

    // Stuck survives a restart and is not retried by `resume`.
    let exec = executor(&clock).memory_log(log.crash()).open().unwrap();
    exec.register(&def).unwrap();
    assert!(exec.resume().unwrap().is_empty());
    assert_eq!(exec.saga(info.id).unwrap().state, SagaState::Stuck);
    assert_eq!(exec.metrics().stuck, 1);

    // After the operator fixes the warehouse, retrying finishes the job.
    fixed.store(true, Ordering::SeqCst);
    let info = exec.retry_stuck(info.id).unwrap();
    assert_eq!(info.state, SagaState::Compensated);
    assert_eq!(world.events(), strings(&["do:reserve", "undo:reserve"]));
    assert_eq!(exec.metrics().stuck, 0);
    assert_eq!(exec.retry_stuck(info.id).unwrap_err().code(), "not_stuck");
}

/// Waits until `parties` threads have arrived, or a generous timeout.
struct Rendezvous {
    arrived: Mutex<usize>,
    all: Condvar,
    parties: usize,
}

impl Rendezvous {
    fn arrive(&self) -> bool {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived += 1;
        self.all.notify_all();
        let (arrived, _) = self.all.wait_timeout_while(arrived, Duration::from_secs(5), |n| *n < self.parties).unwrap();
        *arrived >= self.parties
    }
}

#[test]
fn a_parallel_group_runs_concurrently_and_compensates_its_completed_steps() {
    let world = Shared::default();
    let meet = Arc::new(Rendezvous { arrived: Mutex::new(0), all: Condvar::new(), parties: 3 });
    let member = |name: &str| {
        let (w, m) = (world.clone(), meet.clone());
        Step::new(name, move |cx: &StepContext<'_, u32>| {
            // Only possible if all three run at the same time.
            if !m.arrive() {
                return Err(StepError::permanent("steps of a group did not run concurrently"));
            }
            w.act(cx);
            Ok(())
        })
        .compensate(undo(&world))
        .no_timeout()
    };
    let def = SagaDefinition::builder("fan-out")
        .parallel([member("x"), member("y"), member("z")])
        .step(failing_step(&world, "after"))
        .build()
        .unwrap();
    let clock = clock();
    let exec = executor(&clock).open().unwrap();
    let info = exec.run(&def, &1).unwrap();
    assert_eq!(info.state, SagaState::Compensated);
    assert_eq!(info.completed_steps.len(), 3, "{info:?}");
    let events = world.events();
    let undone: HashSet<&str> = events.iter().filter_map(|e| e.strip_prefix("undo:")).collect();
    assert_eq!(undone, HashSet::from(["x", "y", "z"]));

    // A member failing: the completed siblings are compensated, it is not.
    let world = Shared::default();
    let def = SagaDefinition::builder("fan-out-fail")
        .step(step(&world, "first"))
        .parallel([step(&world, "p"), failing_step(&world, "q"), step(&world, "r")])
        .build()
        .unwrap();
    let info = exec.run(&def, &1).unwrap();
    assert_eq!(info.state, SagaState::Compensated);
    let events = world.events();
    assert_eq!(events.last().map(String::as_str), Some("undo:first"));
    for name in ["p", "r"] {
        assert!(events.contains(&format!("undo:{name}")), "{events:?}");
    }
    assert!(!events.iter().any(|e| e == "undo:q"));
}

/// The scripted saga of the crash tests: `fail` makes step `c` fail.
fn scripted(world: &Shared, fail: bool) -> SagaDefinition<u32> {
    let c = if fail { failing_step(world, "c") } else { step(world, "c") };
    SagaDefinition::builder(if fail { "scripted-fail" } else { "scripted" })
        .step(step(world, "a"))
        .parallel([step(world, "b1"), step(world, "b2")])
        .step(c)
        .step(step(world, "d"))
        .build()
        .unwrap()
}

fn crash_everywhere(fail: bool) {
    let expected_final = if fail { SagaState::Compensated } else { SagaState::Completed };
    for n in 0..500u64 {
        let world = Shared::default();
        let def = scripted(&world, fail);
        let clock = clock();
        let log = MemoryLog::new();
        log.crash_after_syncs(n);
        let outcome = executor(&clock).memory_log(log.clone()).open().and_then(|exec| exec.run(&def, &5));
        let Some(image) = log.crash_image() else {
            // No crash within this run: it is the reference.
            let info = outcome.unwrap();
            assert_eq!(info.state, expected_final);
            assert!(n > 5, "crash points were exercised ({n})");
            return;
        };
        let before: Vec<String> = world.calls();

        let exec = executor(&clock).memory_log(image).open().unwrap();
        exec.register(&def).unwrap();
        let sagas = exec.sagas();
        if sagas.is_empty() {
            assert!(before.is_empty(), "n={n}: an action ran before its saga was durable: {before:?}");
            continue;
        }
        assert_eq!(sagas.len(), 1);
        let id = sagas[0].id;
        let done_before: Vec<String> = sagas[0].completed_steps.clone();
        world.lock().calls.clear();
        let resumed = exec.resume().unwrap();
        let info = if resumed.is_empty() { exec.saga(id).unwrap() } else { resumed[0].clone() };
        assert_eq!(info.state, expected_final, "n={n}");
        let after = world.calls();
        for step in &done_before {
            let key = format!("{id}/{step}/action");
            assert!(!after.contains(&key), "n={n}: {step} was durably done but ran again");
        }
        for key in &after {
            assert!(key.starts_with(&id.to_string()), "n={n}: keys are stable across the crash: {key}");
        }
        let events = world.events();
        let expected =
            if fail { strings(&["undo:b2", "undo:b1", "undo:a"]) } else { strings(&["do:a", "do:c", "do:d"]) };
        for e in &expected {
            assert_eq!(events.iter().filter(|x| *x == e).count(), 1, "n={n}: {e} exactly once in {events:?}");
        }
        if fail {
            let tail: Vec<&String> = events.iter().filter(|e| e.starts_with("undo:")).collect();
            assert_eq!(tail.last().map(|s| s.as_str()), Some("undo:a"), "n={n}: {events:?}");
            assert!(!events.contains(&"do:d".to_string()));
        } else {
            assert!(!events.iter().any(|e| e.starts_with("undo:")), "n={n}: {events:?}");
        }
    }
    panic!("the saga never ran to its end");
}

#[test]
fn a_crash_at_every_durability_point_resumes_to_the_same_end() {
    crash_everywhere(false);
}

#[test]
fn a_crash_while_compensating_resumes_the_compensation() {
    crash_everywhere(true);
}

#[test]
fn the_log_survives_checkpoints_and_a_real_directory() {
    let dir = tempfile::tempdir().unwrap();
    let world = Shared::default();
    let ok = scripted(&world, false);
    let failing = scripted(&world, true);
    let clock = clock();
    let ids = {
        let exec = executor(&clock).dir(dir.path()).segment_size_bytes(64 << 10).open().unwrap();
        let mut ids = Vec::new();
        for i in 0..200 {
            let def = if i % 2 == 0 { &ok } else { &failing };
            ids.push(exec.run(def, &i).unwrap().id);
        }
        ids
    };
    let exec = executor(&clock).dir(dir.path()).segment_size_bytes(64 << 10).max_finished_sagas(1024).open().unwrap();
    let sagas = exec.sagas();
    assert_eq!(sagas.len(), 200);
    for (i, id) in ids.iter().enumerate() {
        let want = if i % 2 == 0 { SagaState::Completed } else { SagaState::Compensated };
        assert_eq!(exec.saga(*id).map(|s| s.state), Some(want));
    }
    assert!(exec.resume().unwrap().is_empty());
}

#[test]
fn bad_definitions_are_refused() {
    let world = Shared::default();
    let cases = [
        SagaDefinition::<u32>::builder("empty").build(),
        SagaDefinition::builder("dup").step(step(&world, "a")).step(step(&world, "a")).build(),
        SagaDefinition::builder("slash").step(step(&world, "a/b")).build(),
        SagaDefinition::builder("").step(step(&world, "a")).build(),
        SagaDefinition::builder("group").parallel(Vec::new()).build(),
    ];
    for case in cases {
        assert_eq!(case.unwrap_err().code(), "invalid_definition");
    }
    let one = SagaDefinition::builder("same").step(step(&world, "a")).build().unwrap();
    let two = SagaDefinition::builder("same").step(step(&world, "a")).build().unwrap();
    let exec = SagaExecutor::in_memory();
    exec.register(&one).unwrap();
    exec.register(&one.clone()).unwrap();
    assert_eq!(exec.register(&two).unwrap_err().code(), "definition_conflict");
    let full = executor(&clock()).max_open_sagas(1).open().unwrap();
    let stuck_world = Shared::default();
    let never_undone = Step::new("x", {
        let w = stuck_world.clone();
        move |cx: &StepContext<'_, u32>| {
            w.act(cx);
            Ok(())
        }
    })
    .compensate(|_| Err(StepError::permanent("no")))
    .no_timeout();
    let stuck = SagaDefinition::builder("s").step(never_undone).step(failing_step(&stuck_world, "y")).build().unwrap();
    assert_eq!(full.run(&stuck, &1).unwrap().state, SagaState::Stuck);
    assert_eq!(full.run(&stuck, &2).unwrap_err().code(), "too_many_sagas");
}

/// Runs a one-step saga whose action always fails with `code`, the step
/// configured by `configure`: its info and the action's call count.
fn failing_payment(
    exec: &SagaExecutor,
    code: &'static str,
    configure: impl FnOnce(Step<u32>) -> Step<u32>,
) -> (dtc::saga::SagaInfo, u32) {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let pay = Step::new("pay", move |_: &StepContext<'_, u32>| {
        counted.fetch_add(1, Ordering::SeqCst);
        Err(StepError::with_code(code, "payment service says no"))
    });
    let def = SagaDefinition::builder(format!("pay-{code}")).step(configure(pay).no_timeout()).build().unwrap();
    let info = exec.run(&def, &1).unwrap();
    (info, calls.load(Ordering::SeqCst))
}

#[test]
fn a_non_retryable_code_ends_a_step_at_once_and_other_codes_are_retried() {
    let exec = SagaExecutor::builder().no_log().clock(Arc::new(ManualClock::default())).seed(3).open().unwrap();
    let run = |code| {
        failing_payment(&exec, code, |step| {
            step.retry(
                RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(2), 5).with_jitter(Jitter::Full),
            )
            .non_retryable(["card_declined"])
        })
    };
    let (declined, calls) = run("card_declined");
    assert_eq!((declined.state, calls), (SagaState::Compensated, 1));
    assert!(declined.failure.unwrap().contains("card_declined: payment service says no"));
    let (busy, calls) = run("busy");
    assert_eq!((busy.state, calls), (SagaState::Compensated, 5), "retried up to the policy's attempts");
}

#[test]
fn the_retry_policys_non_retryable_codes_end_a_step_at_once_too() {
    // The one retry policy type names its non-retryable codes itself; a saga
    // step honours them as it honours `Step::non_retryable`.
    let exec = SagaExecutor::builder().no_log().clock(Arc::new(ManualClock::default())).seed(4).open().unwrap();
    let run = |code| {
        let (info, calls) = failing_payment(&exec, code, |step| {
            step.retry(
                RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(2), 4)
                    .non_retryable(["card_declined"]),
            )
        });
        (info.state, calls)
    };
    assert_eq!(run("card_declined"), (SagaState::Compensated, 1));
    assert_eq!(run("busy"), (SagaState::Compensated, 4), "other codes are retried up to the policy's attempts");
}
