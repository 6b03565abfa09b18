//! Every opener of a data directory uses the format the directory records,
//! whatever it is configured with: a log written with a non-default segment
//! size and segment count is read by the coordinator opened with defaults,
//! by `DataDir` (verify, recover, status) and, for a saga log, by the saga
//! executor opened with its defaults.

use std::path::Path;

use dtc::{
    Coordinator, Durability, Ledger, Outcome, Transfer, TxId,
    ops::DataDir,
    saga::{SagaDefinition, SagaExecutor, SagaState, Step},
};

const SEGMENT_BYTES: u64 = 64 << 10;
const MAX_SEGMENTS: usize = 6;
const ACCOUNTS: usize = 20;
const BALANCE: i64 = 1_000;

fn ledgers() -> Vec<Ledger> {
    let ledgers: Vec<Ledger> = (0..2).map(|_| Ledger::new()).collect();
    for (s, ledger) in ledgers.iter().enumerate() {
        for a in 0..ACCOUNTS {
            ledger.create_account(&format!("acct-{}", s * ACCOUNTS + a), BALANCE).unwrap();
        }
    }
    ledgers
}

fn coordinator(dir: &Path, format: Option<(u64, usize)>) -> Coordinator {
    let ledgers = ledgers();
    let mut builder = Coordinator::builder()
        .service("svc-0", ledgers[0].clone())
        .service("svc-1", ledgers[1].clone())
        .durability(Durability::Sync)
        .dir(dir);
    if let Some((segment_bytes, max_segments)) = format {
        builder = builder.segment_size_bytes(segment_bytes).max_segments(max_segments);
    }
    builder.open().unwrap()
}

/// Enough transfers to fill several segments of the small size.
fn transfers(dtc: &Coordinator, count: usize) -> Vec<TxId> {
    (0..count)
        .map(|i| {
            let tx = dtc.new_tx_id();
            let (from, to) = (format!("acct-{}", i % ACCOUNTS), format!("acct-{}", ACCOUNTS + i % ACCOUNTS));
            let outcome = dtc.execute_as(tx, &[Transfer::new("svc-0", &from, "svc-1", &to, 1)]).unwrap();
            assert_eq!(outcome, Outcome::Committed);
            tx
        })
        .collect()
}

fn segment_files(dir: &Path) -> Vec<u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .map(|e| e.metadata().unwrap().len())
        .collect()
}

#[test]
fn every_opener_reads_a_directory_written_with_a_non_default_format() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let ids = {
        let dtc = coordinator(&dir, Some((SEGMENT_BYTES, MAX_SEGMENTS)));
        let ids = transfers(&dtc, 1_500);
        dtc.shutdown().unwrap();
        ids
    };
    let sizes = segment_files(&dir);
    assert!(sizes.len() >= 2 && sizes.iter().all(|&s| s == SEGMENT_BYTES), "{sizes:?}");
    assert!(dir.join("dtc-format").is_file());

    let data = DataDir::new(&dir);
    let report = data.verify().unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.accounts, 2 * ACCOUNTS as u64);
    let summary = data.recover().unwrap();
    assert_eq!(summary.accounts, 2 * ACCOUNTS as u64);
    assert_eq!(summary.total_balance, 2 * ACCOUNTS as i128 * i128::from(BALANCE));
    let statuses = data.status(&ids).unwrap();
    assert!(statuses.iter().all(|(_, status)| status.as_str() == "committed"), "{statuses:?}");

    // The coordinator opened with the defaults (64 MiB segments, 4 of them)
    // keeps the directory's format and keeps working.
    {
        // More log than the directory's 6 × 64 KiB hold: the coordinator
        // must checkpoint at the directory's pace, not every 64 MiB.
        let dtc = coordinator(&dir, None);
        transfers(&dtc, 6_000);
        dtc.shutdown().unwrap();
    }
    let sizes = segment_files(&dir);
    assert!(sizes.iter().all(|&s| s == SEGMENT_BYTES), "{sizes:?}");
    assert!(sizes.len() <= MAX_SEGMENTS, "{sizes:?}");
    assert!(data.verify().unwrap().ok);
    assert_eq!(data.status(&ids).unwrap().len(), ids.len());
}

#[test]
fn a_directory_from_before_format_files_is_inferred() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    {
        let dtc = coordinator(&dir, Some((SEGMENT_BYTES, MAX_SEGMENTS)));
        transfers(&dtc, 1_000);
        dtc.shutdown().unwrap();
    }
    // As an older dtc left it: no format file.
    std::fs::remove_file(dir.join("dtc-format")).unwrap();
    let data = DataDir::new(&dir);
    assert!(data.verify().unwrap().ok);
    assert!(!dir.join("dtc-format").exists(), "verify must not write");
    let summary = data.recover().unwrap();
    assert_eq!(summary.total_balance, 2 * ACCOUNTS as i128 * i128::from(BALANCE));
    assert!(dir.join("dtc-format").is_file(), "the first open records the format");
}

#[test]
fn a_damaged_format_file_is_reported_not_guessed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    {
        let dtc = coordinator(&dir, Some((SEGMENT_BYTES, MAX_SEGMENTS)));
        transfers(&dtc, 10);
        dtc.shutdown().unwrap();
    }
    let mut bytes = std::fs::read(dir.join("dtc-format")).unwrap();
    bytes[9] ^= 0x10;
    std::fs::write(dir.join("dtc-format"), &bytes).unwrap();
    let data = DataDir::new(&dir);
    let report = data.verify().unwrap();
    assert!(!report.ok && !report.recoverable, "{report:?}");
    assert!(report.problems.iter().any(|p| p.kind == "format_invalid"), "{report:?}");
    assert!(matches!(data.recover(), Err(dtc::Error::Corrupt { .. })));
}

#[test]
fn the_saga_executor_reads_its_directory_format() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sagas");
    let def = SagaDefinition::builder("one").step(Step::new("a", |_| Ok(())).no_timeout()).build().unwrap();
    let ids: Vec<_> = {
        let exec = SagaExecutor::builder().dir(&dir).segment_size_bytes(SEGMENT_BYTES).open().unwrap();
        (0..400u32).map(|i| exec.run(&def, &i).unwrap().id).collect()
    };
    assert!(segment_files(&dir).iter().all(|&s| s == SEGMENT_BYTES));
    // The default segment size is 1 MiB: the directory's 64 KiB wins.
    let exec = SagaExecutor::open(&dir).unwrap();
    for id in &ids {
        assert_eq!(exec.saga(*id).map(|s| s.state), Some(SagaState::Completed));
    }
    exec.run(&def, &1).unwrap();
    drop(exec);
    assert!(segment_files(&dir).iter().all(|&s| s == SEGMENT_BYTES));
}
