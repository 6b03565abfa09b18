//! Criterion benchmarks of the engine: single-transaction latency by number
//! of services (one-phase and two-phase, in memory and synced), by name
//! against `Account` handles, batch throughput, and the ledger's
//! lookup/update.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dtc::{Coordinator, Durability, Ledger, Participant, Transfer, TxId};

const ACCOUNTS_PER_SERVICE: usize = 1_000;

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("acct-{i}")).collect()
}

fn coordinator(services: usize, durability: Durability, dir: Option<&std::path::Path>) -> Coordinator {
    let accounts = names(ACCOUNTS_PER_SERVICE);
    let mut builder = Coordinator::builder().durability(durability);
    if let Some(dir) = dir {
        builder = builder.dir(dir).segment_size_bytes(16 << 20);
    }
    for s in 0..services {
        let ledger = Ledger::with_capacity(ACCOUNTS_PER_SERVICE);
        for a in &accounts {
            ledger.create_account(a, 1_000_000_000).expect("fresh account");
        }
        builder = builder.service(format!("svc-{s}"), ledger);
    }
    builder.open().expect("open")
}

/// A transaction touching `services` services (one leg per adjacent pair).
fn legs<'a>(services: &'a [String], accounts: &'a [String], i: usize) -> Vec<Transfer<'a>> {
    let n = services.len();
    let a = &accounts[i % accounts.len()];
    let b = &accounts[(i * 7 + 1) % accounts.len()];
    if n == 1 {
        return vec![Transfer::new(&services[0], a, &services[0], b, 1)];
    }
    (0..n - 1).map(|s| Transfer::new(&services[s], a, &services[s + 1], b, 1)).collect()
}

fn single(c: &mut Criterion) {
    let accounts = names(ACCOUNTS_PER_SERVICE);
    for durability in [Durability::None, Durability::Sync] {
        for services in [1usize, 2, 8] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = (durability == Durability::Sync).then(|| tmp.path());
            let dtc = coordinator(services, durability, dir);
            let names: Vec<String> = (0..services).map(|s| format!("svc-{s}")).collect();
            let label = if durability == Durability::Sync { "sync" } else { "none" };
            let mut i = 0;
            c.bench_function(&format!("single/{label}/{services}-services"), |b| {
                b.iter(|| {
                    i += 1;
                    black_box(dtc.execute(&legs(&names, &accounts, i)).expect("runs"))
                })
            });
            dtc.shutdown().expect("shutdown");
        }
    }
}

/// One leg between two services, by name and between `Account` handles
/// resolved once (the same accounts, in memory).
fn handles(c: &mut Criterion) {
    let accounts = names(ACCOUNTS_PER_SERVICE);
    let dtc = coordinator(2, Durability::None, None);
    let resolved: Vec<[dtc::Account; 2]> = accounts
        .iter()
        .map(|a| [dtc.account("svc-0", a).expect("known"), dtc.account("svc-1", a).expect("known")])
        .collect();
    let mut group = c.benchmark_group("single/none/2-services");
    let mut i = 0;
    group.bench_function("by-name", |b| {
        b.iter(|| {
            i += 1;
            let (a, z) = (&accounts[i % accounts.len()], &accounts[(i * 7 + 1) % accounts.len()]);
            black_box(dtc.execute(&[Transfer::new("svc-0", a, "svc-1", z, 1)]).expect("runs"))
        })
    });
    group.bench_function("handles", |b| {
        b.iter(|| {
            i += 1;
            let (a, z) = (&resolved[i % accounts.len()][0], &resolved[(i * 7 + 1) % accounts.len()][1]);
            black_box(dtc.execute(&[Transfer::between(a, z, 1)]).expect("runs"))
        })
    });
    group.finish();
    dtc.shutdown().expect("shutdown");
}

fn batch(c: &mut Criterion) {
    let accounts = names(ACCOUNTS_PER_SERVICE);
    let names: Vec<String> = (0..8).map(|s| format!("svc-{s}")).collect();
    let mut group = c.benchmark_group("batch");
    for durability in [Durability::None, Durability::Sync] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = (durability == Durability::Sync).then(|| tmp.path());
        let dtc = coordinator(8, durability, dir);
        let label = if durability == Durability::Sync { "sync" } else { "none" };
        group.throughput(Throughput::Elements(1_000));
        let mut round = 0;
        group.bench_function(format!("{label}/1000-transfers"), |b| {
            b.iter_batched(
                || {
                    round += 1;
                    (0..1_000)
                        .map(|i| {
                            let k = round * 1_000 + i;
                            let s = k % 8;
                            vec![Transfer::new(
                                &names[s],
                                &accounts[k % accounts.len()],
                                &names[(s + 1) % 8],
                                &accounts[(k * 13) % accounts.len()],
                                1,
                            )]
                        })
                        .collect::<Vec<_>>()
                },
                |txs| {
                    let refs: Vec<&[Transfer<'_>]> = txs.iter().map(Vec::as_slice).collect();
                    black_box(dtc.execute_batch(&refs).expect("runs"))
                },
                BatchSize::SmallInput,
            )
        });
        dtc.shutdown().expect("shutdown");
    }
    group.finish();
}

fn ledger(c: &mut Criterion) {
    let accounts = names(100_000);
    let mut ledger = Ledger::with_capacity(accounts.len());
    for a in &accounts {
        ledger.create_account(a, 1_000).expect("fresh account");
    }
    let mut i = 0;
    c.bench_function("ledger/lookup", |b| {
        b.iter(|| {
            i = (i + 7919) % accounts.len();
            black_box(ledger.balance(&accounts[i]))
        })
    });
    c.bench_function("ledger/prepare+commit", |b| {
        b.iter(|| {
            i = (i + 7919) % accounts.len();
            let j = (i + 1) % accounts.len();
            let ops = [
                dtc::participant::Operation { account: &accounts[i], key: None, delta: -1 },
                dtc::participant::Operation { account: &accounts[j], key: None, delta: 1 },
            ];
            let tx = dtc::BranchId { tx: TxId::from_u128(i as u128), index: 0 };
            let prepared = ledger.prepare(tx, dtc::Work::Transfers(&ops)).expect("funded");
            ledger.commit(tx, &prepared).expect("applies");
        })
    });
}

criterion_group!(benches, single, handles, batch, ledger);
criterion_main!(benches);
