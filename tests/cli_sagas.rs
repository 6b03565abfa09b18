//! `dtc sagas`: a stuck saga in a real saga directory is listed as stuck.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use dtc::saga::{ManualClock, SagaDefinition, SagaExecutor, SagaState, Step, StepError};
use dtc::{Jitter, RetryPolicy};

fn dtc(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dtc")).args(args).arg("--dir").arg(dir).output().unwrap()
}

/// The JSON list a successful command printed.
fn listed(out: &Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn stuck_sagas_are_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sagas");
    {
        let exec = SagaExecutor::builder()
            .dir(&dir)
            .clock(Arc::new(ManualClock::default()))
            .seed(1)
            .compensation_retry(
                RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(2), 2).with_jitter(Jitter::Full),
            )
            .open()
            .unwrap();
        let reserve = Step::new("reserve", |_: &dtc::saga::StepContext<'_, u32>| Ok(()))
            .compensate(|_| Err(StepError::retryable("warehouse offline")))
            .no_timeout();
        let pay = Step::new("pay", |_: &dtc::saga::StepContext<'_, u32>| Err(StepError::permanent("card declined")))
            .no_timeout();
        let def = SagaDefinition::builder("order").step(reserve).step(pay).build().unwrap();
        assert_eq!(exec.run(&def, &1).unwrap().state, SagaState::Stuck);
        let done = SagaDefinition::builder("noop")
            .step(Step::new("ok", |_: &dtc::saga::StepContext<'_, u32>| Ok(())))
            .build()
            .unwrap();
        assert_eq!(exec.run(&done, &2).unwrap().state, SagaState::Completed);
    }
    let listed = listed(&dtc(&["sagas", "--json", "--state", "stuck"], &dir));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["state"], "stuck");
    assert_eq!(listed[0]["definition"], "order");
    let bad = dtc(&["sagas", "--state", "nope"], &dir);
    assert!(!bad.status.success());

    // `dtc txs` lists the same stuck saga among unfinished transactions.
    let listed = self::listed(&dtc(&["txs", "--json", "--state", "stuck"], &dir));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0]["kind"].as_str(), listed[0]["state"].as_str()), (Some("saga"), Some("stuck")));
    // Offline the definition is not registered: steps are named by index.
    assert_eq!(listed[0]["participants"][0]["name"], "#0");
    assert_eq!(listed[0]["participants"][0]["phase"], "completed");
    assert!(listed[0]["reason"].as_str().unwrap().contains("warehouse offline"), "{listed:?}");
}

/// A stuck saga in a running executor: `dtc txs` sees it live and
/// `dtc retry-now` resumes its compensation once the cause is fixed.
#[test]
fn a_running_executor_retries_a_stuck_saga_on_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sagas");
    let exec = SagaExecutor::builder()
        .dir(&dir)
        .compensation_retry(
            RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(2), 2).with_jitter(Jitter::Full),
        )
        .open()
        .unwrap();
    let warehouse_up = Arc::new(AtomicBool::new(false));
    let up = warehouse_up.clone();
    let reserve = Step::new("reserve", |_: &dtc::saga::StepContext<'_, u32>| Ok(()))
        .compensate(
            move |_| {
                if up.load(Ordering::SeqCst) { Ok(()) } else { Err(StepError::retryable("warehouse offline")) }
            },
        )
        .no_timeout();
    let pay =
        Step::new("pay", |_: &dtc::saga::StepContext<'_, u32>| Err(StepError::permanent("card declined"))).no_timeout();
    let def = SagaDefinition::builder("order").step(reserve).step(pay).build().unwrap();
    let stuck = exec.run(&def, &1).unwrap();
    assert_eq!(stuck.state, SagaState::Stuck);

    let dtc = |args: &[&str]| dtc(args, &dir);
    let listed = listed(&dtc(&["txs", "--json"]));
    assert_eq!(listed[0]["tx"], stuck.id.to_string());
    assert_eq!(listed[0]["participants"][0]["name"], "reserve", "live: the definition is registered");

    let refused = dtc(&["resolve", "--tx", &stuck.id.to_string(), "--commit", "--reason", "r"]);
    assert_eq!(refused.status.code(), Some(1));
    warehouse_up.store(true, Ordering::SeqCst);
    let out = dtc(&["retry-now", "--tx", &stuck.id.to_string(), "--reason", "warehouse back online"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while exec.saga(stuck.id).unwrap().state != SagaState::Compensated {
        assert!(std::time::Instant::now() < deadline, "the retried saga did not compensate");
        std::thread::sleep(Duration::from_millis(10));
    }
    let again = dtc(&["retry-now", "--tx", &stuck.id.to_string()]);
    assert_eq!(again.status.code(), Some(1), "no longer stuck");
    assert!(String::from_utf8_lossy(&again.stderr).contains("no parked or retrying call"));
}
