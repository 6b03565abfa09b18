//! `render_prometheus`: the text exposition format, checked line by line
//! after real transactions (commits and an insufficient-funds abort), with
//! and without the log's counters.

use std::collections::{HashMap, HashSet};

use dtc::{Coordinator, Durability, Ledger, Outcome, Transfer, ops::render_prometheus};

/// One parsed sample line: `name{labels} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `key="value",key="value"` (escapes: `\\`, `\"`, `\n`).
fn parse_labels(text: &str, line: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("label without =\" in {line:?}"));
        assert!(is_label_name(key), "bad label name {key:?} in {line:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        labels.push((key.to_string(), value));
        rest = &after[end + 1..];
        if let Some(next) = rest.strip_prefix(',') {
            rest = next;
        } else {
            assert!(rest.is_empty(), "junk after a label in {line:?}");
        }
    }
    labels
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().unwrap_or_else(|_| panic!("value {v:?} does not parse in {line:?}")),
    };
    let (name, labels) = match series.split_once('{') {
        Some((name, labels)) => {
            let labels = labels.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
            (name, parse_labels(labels, line))
        }
        None => (series, Vec::new()),
    };
    assert!(is_metric_name(name), "bad metric name {name:?} in {line:?}");
    Sample { name: name.to_string(), labels, value }
}

/// The family a sample belongs to (summaries add `_sum` and `_count`).
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|t| t == "summary" || t == "histogram")
        {
            return base;
        }
    }
    name
}

/// Checks the whole text and returns the samples and each family's type.
fn parse_exposition(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut helps = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let mut finished_families = HashSet::new();
    let mut current_family: Option<String> = None;
    for line in text.lines() {
        assert!(!line.is_empty(), "empty line in the exposition");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or_else(|| panic!("HELP without text: {line:?}"));
            assert!(is_metric_name(name) && !help.trim().is_empty(), "bad HELP line {line:?}");
            assert!(helps.insert(name.to_string()), "second HELP for {name}");
            assert!(!types.contains_key(name), "HELP after TYPE for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("TYPE without type: {line:?}"));
            assert!(
                ["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind),
                "unknown type in {line:?}"
            );
            assert!(helps.contains(name), "TYPE before HELP for {name}");
            assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "second TYPE for {name}");
        } else {
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let sample = parse_sample(line);
            let family = family_of(&sample.name, &types).to_string();
            assert!(types.contains_key(&family), "sample before its TYPE line: {line:?}");
            // A family's samples are contiguous.
            if current_family.as_deref() != Some(family.as_str()) {
                if let Some(previous) = current_family.take() {
                    finished_families.insert(previous);
                }
                assert!(!finished_families.contains(&family), "samples of {family} are not contiguous");
                current_family = Some(family);
            }
            samples.push(sample);
        }
    }
    for (name, kind) in &types {
        assert!(samples.iter().any(|s| family_of(&s.name, &types) == name), "family {name} has no samples");
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} does not end in _total");
        } else {
            assert!(!name.ends_with("_total"), "non-counter {name} ends in _total");
        }
    }
    (samples, types)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .collect();
    assert_eq!(matching.len(), 1, "exactly one sample {name}{labels:?}");
    matching[0].value
}

fn bank(durable: Option<&std::path::Path>) -> Coordinator {
    let eu = Ledger::new();
    eu.create_account("alice", 100).unwrap();
    let us = Ledger::new();
    us.create_account("bob", 0).unwrap();
    let mut builder = Coordinator::builder().service("eu", eu).service("us", us);
    if let Some(dir) = durable {
        builder = builder.durability(Durability::Sync).dir(dir);
    }
    builder.open().unwrap()
}

/// Three commits and one insufficient-funds abort.
fn run_transactions(dtc: &Coordinator) {
    for _ in 0..3 {
        assert_eq!(dtc.execute(&[Transfer::new("eu", "alice", "us", "bob", 10)]).unwrap(), Outcome::Committed);
    }
    let outcome = dtc.execute(&[Transfer::new("us", "bob", "eu", "alice", 1_000)]).unwrap();
    assert!(matches!(outcome, Outcome::Aborted(ref r) if r.code() == "insufficient_funds"), "{outcome:?}");
}

#[test]
fn exposition_is_valid_and_counts_what_happened() {
    let tmp = tempfile::tempdir().unwrap();
    let dtc = bank(Some(tmp.path()));
    run_transactions(&dtc);
    let log = dtc.log_stats().expect("durable mode has log stats");
    let text = render_prometheus(&dtc.metrics(), Some(&log));
    let (samples, types) = parse_exposition(&text);

    assert_eq!(value(&samples, "dtc_transactions_total", &[("outcome", "committed")]), 3.0);
    assert_eq!(
        value(&samples, "dtc_transactions_total", &[("outcome", "aborted"), ("reason", "insufficient_funds")]),
        1.0
    );
    assert_eq!(value(&samples, "dtc_transactions_total", &[("outcome", "aborted"), ("reason", "lock_timeout")]), 0.0);
    for counter in ["dtc_retries_total", "dtc_timeouts_total", "dtc_panics_total", "dtc_parked_total"] {
        assert_eq!(types.get(counter).map(String::as_str), Some("counter"), "{counter}");
        assert_eq!(value(&samples, counter, &[]), 0.0, "{counter}");
    }

    assert_eq!(types.get("dtc_parked_calls").map(String::as_str), Some("gauge"));
    assert_eq!(value(&samples, "dtc_parked_calls", &[]), 0.0);
    assert_eq!(types.get("dtc_unfinished_transactions").map(String::as_str), Some("gauge"));
    for state in ["in-doubt", "committing", "rolling-back", "stuck"] {
        assert_eq!(value(&samples, "dtc_unfinished_transactions", &[("state", state)]), 0.0, "{state}");
    }

    assert_eq!(types.get("dtc_phase_latency_seconds").map(String::as_str), Some("summary"));
    for phase in ["lock_wait", "prepare", "log", "commit", "total"] {
        let mut previous = 0.0;
        for quantile in ["0.5", "0.9", "0.99", "0.999"] {
            let seconds = value(&samples, "dtc_phase_latency_seconds", &[("phase", phase), ("quantile", quantile)]);
            assert!(seconds >= previous && seconds < 60.0, "{phase} q{quantile} = {seconds}");
            previous = seconds;
        }
        let count = value(&samples, "dtc_phase_latency_seconds_count", &[("phase", phase)]);
        let sum = value(&samples, "dtc_phase_latency_seconds_sum", &[("phase", phase)]);
        assert!(count.fract() == 0.0 && sum >= 0.0, "{phase}: count {count}, sum {sum}");
    }
    // Stage latencies are a sample (one transaction in eight per thread
    // shard, starting with the first): some, never more than ran.
    let total = value(&samples, "dtc_phase_latency_seconds_count", &[("phase", "total")]);
    assert!((1.0..=4.0).contains(&total), "total latency samples: {total}");

    // The log: a commit record per committed transaction, at least.
    assert!(value(&samples, "dtc_log_records_total", &[]) >= 3.0);
    assert!(value(&samples, "dtc_log_syncs_total", &[]) >= 1.0);
    assert!(value(&samples, "dtc_log_bytes_written_total", &[]) >= 3.0 * 32.0);
    assert!(value(&samples, "dtc_log_records_per_sync", &[]) > 0.0);
    assert_eq!(types.get("dtc_log_records_per_sync").map(String::as_str), Some("gauge"));
    assert!(value(&samples, "dtc_log_segments_live", &[]) >= 1.0);
    dtc.shutdown().unwrap();
}

#[test]
fn without_a_log_the_log_families_are_absent() {
    let dtc = bank(None);
    run_transactions(&dtc);
    assert!(dtc.log_stats().is_none());
    let text = render_prometheus(&dtc.metrics(), None);
    let (samples, types) = parse_exposition(&text);
    assert!(!types.keys().any(|name| name.starts_with("dtc_log_")), "{types:?}");
    assert_eq!(value(&samples, "dtc_transactions_total", &[("outcome", "committed")]), 3.0);
    dtc.shutdown().unwrap();
}

#[test]
fn an_empty_snapshot_renders_zeros() {
    let text = render_prometheus(&dtc::ops::MetricsSnapshot::default(), None);
    let (samples, _) = parse_exposition(&text);
    assert!(samples.iter().all(|s| s.value == 0.0), "{text}");
}
