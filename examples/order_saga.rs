//! An order as a saga: reserve stock, charge the card, ship, notify.
//!
//! 1. The card is declined: the stock reservation is compensated.
//! 2. The executor "crashes" right after the shipping call returned, before
//!    that was logged; a new executor on the same log resumes the saga,
//!    calls shipping again with the same idempotency key (the shipping
//!    service recognises it) and finishes.
//!
//! Run: `cargo run --example order_saga`

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dtc::saga::{MemoryLog, SagaDefinition, SagaError, SagaExecutor, SagaState, Step, StepContext, StepError};
use dtc::{Jitter, RetryPolicy};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: String,
    item: String,
    quantity: u32,
    card: String,
}

/// A toy remote service: applies each idempotency key once.
#[derive(Default)]
struct Service {
    name: &'static str,
    seen: Mutex<HashSet<String>>,
}

impl Service {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Service { name, seen: Mutex::new(HashSet::new()) })
    }
    /// Runs `effect` unless `key` was applied before.
    fn once(&self, key: &str, what: &str, effect: impl FnOnce()) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert(key.to_string()) {
            effect();
            println!("    [{}] {what}   (key {key})", self.name);
        } else {
            println!("    [{}] duplicate of {key}: already done, nothing to do", self.name);
        }
    }
}

struct Shop {
    stock: Mutex<HashMap<String, u32>>,
    inventory: Arc<Service>,
    payments: Arc<Service>,
    shipping: Arc<Service>,
    notifications: Arc<Service>,
    /// Demo switch: crash right after the next shipping call.
    crash_after_shipping: AtomicBool,
    log: MemoryLog,
}

fn definition(shop: &Arc<Shop>) -> Result<SagaDefinition<Order>, SagaError> {
    let (s1, s2, s3, s4, s5, s6) = (shop.clone(), shop.clone(), shop.clone(), shop.clone(), shop.clone(), shop.clone());
    let quick = RetryPolicy::new(Duration::from_millis(5), Duration::from_millis(50), 3).with_jitter(Jitter::Full);
    SagaDefinition::builder("order")
        .deadline(Duration::from_secs(30))
        .step(
            Step::new("reserve_stock", move |cx: &StepContext<'_, Order>| {
                let order = cx.input();
                let mut stock = s1.stock.lock().unwrap_or_else(|e| e.into_inner());
                let left = stock.get(&order.item).copied().unwrap_or(0);
                if left < order.quantity {
                    return Err(StepError::permanent(format!("only {left} {} left", order.item)));
                }
                s1.inventory.once(cx.key().as_str(), &format!("reserved {} x {}", order.quantity, order.item), || {
                    stock.insert(order.item.clone(), left - order.quantity);
                });
                Ok(())
            })
            .compensate(move |cx| {
                let order = cx.input();
                let mut stock = s2.stock.lock().unwrap_or_else(|e| e.into_inner());
                s2.inventory.once(cx.key().as_str(), &format!("released {} x {}", order.quantity, order.item), || {
                    *stock.entry(order.item.clone()).or_default() += order.quantity;
                });
                Ok(())
            })
            .retry(quick.clone()),
        )
        .step(
            Step::new("charge_card", move |cx: &StepContext<'_, Order>| {
                let order = cx.input();
                if order.card == "declined" {
                    println!("    [payments] card of order {} declined", order.id);
                    return Err(StepError::permanent("card declined"));
                }
                s3.payments.once(cx.key().as_str(), &format!("charged order {}", order.id), || {});
                Ok(())
            })
            .compensate(move |cx| {
                s4.payments.once(cx.key().as_str(), &format!("refunded order {}", cx.input().id), || {});
                Ok(())
            })
            .retry(quick.clone()),
        )
        .step(
            Step::new("ship", move |cx: &StepContext<'_, Order>| {
                s5.shipping.once(cx.key().as_str(), &format!("shipped order {}", cx.input().id), || {});
                if s5.crash_after_shipping.swap(false, Ordering::SeqCst) {
                    // The process dies after the call returned, before the
                    // executor could log it: the next log sync fails.
                    println!("    *** crash! (the executor stops before logging that shipping is done)");
                    s5.log.crash_after_syncs(s5.log.sync_count());
                }
                Ok(())
            })
            .retry(quick.clone()),
        )
        .step(
            Step::new("notify", move |cx: &StepContext<'_, Order>| {
                s6.notifications.once(cx.key().as_str(), &format!("emailed customer about {}", cx.input().id), || {});
                Ok(())
            })
            .retry(quick.clone()),
        )
        .build()
}

fn print_sagas(executor: &SagaExecutor) {
    for saga in executor.sagas() {
        println!(
            "    saga {} ({}): {}, steps done {:?}{}",
            saga.id,
            saga.definition,
            saga.state,
            saga.completed_steps,
            saga.failure.map(|f| format!(", because {f}")).unwrap_or_default()
        );
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e} ({})", e.code());
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), SagaError> {
    let shop = Arc::new(Shop {
        stock: Mutex::new(HashMap::from([("lamp".to_string(), 10)])),
        inventory: Service::new("inventory"),
        payments: Service::new("payments"),
        shipping: Service::new("shipping"),
        notifications: Service::new("notifications"),
        crash_after_shipping: AtomicBool::new(false),
        log: MemoryLog::new(),
    });
    let order_saga = definition(&shop)?;
    let stock = |shop: &Shop| shop.stock.lock().map(|s| s.get("lamp").copied().unwrap_or(0)).unwrap_or(0);

    println!("1. order A-1: 3 lamps, the card is declined");
    let executor = SagaExecutor::builder().memory_log(shop.log.clone()).open()?;
    let order = Order { id: "A-1".into(), item: "lamp".into(), quantity: 3, card: "declined".into() };
    let info = executor.run(&order_saga, &order)?;
    println!("  => {} ({}); lamps in stock: {}", info.state, info.failure.unwrap_or_default(), stock(&shop));
    assert_eq!(info.state, SagaState::Compensated);

    println!("\n2. order A-2: 2 lamps; the executor crashes during shipping");
    shop.crash_after_shipping.store(true, Ordering::SeqCst);
    let order = Order { id: "A-2".into(), item: "lamp".into(), quantity: 2, card: "4242".into() };
    match executor.run(&order_saga, &order) {
        Err(e) => println!("  => the run stopped: {e}"),
        Ok(info) => println!("  => unexpectedly finished: {}", info.state),
    }
    drop(executor);
    let Some(after_crash) = shop.log.crash_image() else {
        println!("  (no crash happened)");
        return Ok(());
    };

    println!("\n  restarting: a new executor on what the log had made durable");
    let executor = SagaExecutor::builder().memory_log(after_crash).open()?;
    executor.register(&order_saga)?;
    print_sagas(&executor);
    println!("  resuming:");
    for info in executor.resume()? {
        println!("  => saga {} resumed to {}; lamps in stock: {}", info.id, info.state, stock(&shop));
        assert_eq!(info.state, SagaState::Completed);
    }
    println!("\n  final saga table:");
    print_sagas(&executor);
    let m = executor.metrics();
    println!(
        "  metrics: resumed {}, completed {}, compensated {}, stuck {}, step attempts {}",
        m.resumed, m.completed, m.compensated, m.stuck, m.step_attempts
    );
    Ok(())
}
