//! The saga log's records, and the table of saga states they build.
//!
//! Byte layout (little-endian; strings are a u16 length then UTF-8 bytes;
//! `saga` is the 16-byte id, `step` a u16 index into the definition's steps
//! in declaration order). The log frames, checksums and orders records;
//! this module gives payloads their meaning and never panics on bad bytes.
//!
//! | kind | record | payload |
//! | --- | --- | --- |
//! | 1 | SagaStarted | saga, definition str, steps u16, deadline_at_ms u64, input str (JSON) |
//! | 2 | StepStarted | saga, step |
//! | 3 | StepDone | saga, step |
//! | 4 | StepFailed | saga, step, attempts u32, cause u8, uncertain u8, reason str |
//! | 5 | DeadlineExceeded | saga |
//! | 6 | CompensationStarted | saga, step |
//! | 7 | CompensationDone | saga, step |
//! | 8 | SagaFinished | saga, end u8, step u16 (0xFFFF: none), reason str |
//! | 9 | StuckRetried | saga, reason (optional) |

use std::collections::{HashMap, VecDeque};

use crate::durable::codec::{DecodeError, Reader, Writer};
use crate::txn::TxId;

const KIND_STARTED: u8 = 1;
const KIND_STEP_STARTED: u8 = 2;
const KIND_STEP_DONE: u8 = 3;
const KIND_STEP_FAILED: u8 = 4;
const KIND_DEADLINE: u8 = 5;
const KIND_COMP_STARTED: u8 = 6;
const KIND_COMP_DONE: u8 = 7;
const KIND_FINISHED: u8 = 8;
const KIND_STUCK_RETRIED: u8 = 9;

/// `step` value meaning "no step".
pub(crate) const NO_STEP: u16 = u16::MAX;

pub(crate) const SNAPSHOT_MAGIC: &[u8; 8] = b"DTCSAGA1";

/// Why a step failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailCause {
    /// The action said the failure is permanent.
    Permanent = 0,
    /// Every attempt the retry policy allows failed.
    Exhausted = 1,
    /// The saga's deadline passed.
    Deadline = 2,
    /// A step of the same parallel group failed; this one stopped retrying.
    Sibling = 3,
}

impl FailCause {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => FailCause::Permanent,
            1 => FailCause::Exhausted,
            2 => FailCause::Deadline,
            3 => FailCause::Sibling,
            _ => return None,
        })
    }
}

/// How a saga ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Completed = 0,
    Compensated = 1,
    Stuck = 2,
}

impl End {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => End::Completed,
            1 => End::Compensated,
            2 => End::Stuck,
            _ => return None,
        })
    }
}

/// One saga log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rec {
    Started {
        saga: TxId,
        definition: String,
        steps: u16,
        deadline_at_ms: u64,
        input: String,
    },
    StepStarted {
        saga: TxId,
        step: u16,
    },
    StepDone {
        saga: TxId,
        step: u16,
    },
    StepFailed {
        saga: TxId,
        step: u16,
        attempts: u32,
        cause: FailCause,
        uncertain: bool,
        reason: String,
    },
    DeadlineExceeded {
        saga: TxId,
    },
    CompStarted {
        saga: TxId,
        step: u16,
    },
    CompDone {
        saga: TxId,
        step: u16,
    },
    Finished {
        saga: TxId,
        end: End,
        step: u16,
        reason: String,
    },
    /// An operator retried a stuck saga's compensations (reason may be
    /// empty; records written before reasons existed decode as empty).
    StuckRetried {
        saga: TxId,
        reason: String,
    },
}

impl Rec {
    pub(crate) fn saga(&self) -> TxId {
        match self {
            Rec::Started { saga, .. }
            | Rec::StepStarted { saga, .. }
            | Rec::StepDone { saga, .. }
            | Rec::StepFailed { saga, .. }
            | Rec::DeadlineExceeded { saga }
            | Rec::CompStarted { saga, .. }
            | Rec::CompDone { saga, .. }
            | Rec::Finished { saga, .. }
            | Rec::StuckRetried { saga, .. } => *saga,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Rec::Started { .. } => "SagaStarted",
            Rec::StepStarted { .. } => "StepStarted",
            Rec::StepDone { .. } => "StepDone",
            Rec::StepFailed { .. } => "StepFailed",
            Rec::DeadlineExceeded { .. } => "DeadlineExceeded",
            Rec::CompStarted { .. } => "CompensationStarted",
            Rec::CompDone { .. } => "CompensationDone",
            Rec::Finished { .. } => "SagaFinished",
            Rec::StuckRetried { .. } => "StuckRetried",
        }
    }

    pub(crate) fn kind(&self) -> u8 {
        match self {
            Rec::Started { .. } => KIND_STARTED,
            Rec::StepStarted { .. } => KIND_STEP_STARTED,
            Rec::StepDone { .. } => KIND_STEP_DONE,
            Rec::StepFailed { .. } => KIND_STEP_FAILED,
            Rec::DeadlineExceeded { .. } => KIND_DEADLINE,
            Rec::CompStarted { .. } => KIND_COMP_STARTED,
            Rec::CompDone { .. } => KIND_COMP_DONE,
            Rec::Finished { .. } => KIND_FINISHED,
            Rec::StuckRetried { .. } => KIND_STUCK_RETRIED,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u128(self.saga().as_u128());
        match self {
            Rec::Started { definition, steps, deadline_at_ms, input, .. } => {
                w.str(definition);
                w.u16(*steps);
                w.u64(*deadline_at_ms);
                w.str(input);
            }
            Rec::StepStarted { step, .. }
            | Rec::StepDone { step, .. }
            | Rec::CompStarted { step, .. }
            | Rec::CompDone { step, .. } => w.u16(*step),
            Rec::StepFailed { step, attempts, cause, uncertain, reason, .. } => {
                w.u16(*step);
                w.u32(*attempts);
                w.u8(*cause as u8);
                w.u8(u8::from(*uncertain));
                w.str(reason);
            }
            Rec::DeadlineExceeded { .. } => {}
            Rec::StuckRetried { reason, .. } => w.str(reason),
            Rec::Finished { end, step, reason, .. } => {
                w.u8(*end as u8);
                w.u16(*step);
                w.str(reason);
            }
        }
        w.0
    }

    pub(crate) fn decode(kind: u8, payload: &[u8]) -> Result<Rec, DecodeError> {
        let mut r = Reader::new(payload, "saga record");
        let saga = TxId::from_u128(r.u128()?);
        let bad = |what| DecodeError { what, offset: 0 };
        let rec = match kind {
            KIND_STARTED => {
                Rec::Started { saga, definition: r.str()?, steps: r.u16()?, deadline_at_ms: r.u64()?, input: r.str()? }
            }
            KIND_STEP_STARTED => Rec::StepStarted { saga, step: r.u16()? },
            KIND_STEP_DONE => Rec::StepDone { saga, step: r.u16()? },
            KIND_STEP_FAILED => Rec::StepFailed {
                saga,
                step: r.u16()?,
                attempts: r.u32()?,
                cause: FailCause::from_u8(r.u8()?).ok_or(bad("failure cause"))?,
                uncertain: r.u8()? != 0,
                reason: r.str()?,
            },
            KIND_DEADLINE => Rec::DeadlineExceeded { saga },
            KIND_COMP_STARTED => Rec::CompStarted { saga, step: r.u16()? },
            KIND_COMP_DONE => Rec::CompDone { saga, step: r.u16()? },
            KIND_FINISHED => Rec::Finished {
                saga,
                end: End::from_u8(r.u8()?).ok_or(bad("saga end"))?,
                step: r.u16()?,
                reason: r.str()?,
            },
            KIND_STUCK_RETRIED => {
                Rec::StuckRetried { saga, reason: if r.is_done() { String::new() } else { r.str()? } }
            }
            _ => return Err(bad("saga record kind")),
        };
        r.finish()?;
        Ok(rec)
    }
}

/// Where one step of one saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepState {
    NotStarted = 0,
    /// Started, no outcome recorded: the action may or may not have run.
    Started = 1,
    Done = 2,
    /// Failed for good, and no attempt can have taken effect.
    Failed = 3,
    /// Failed for good, but an attempt timed out or panicked: it may have
    /// taken effect, so it is compensated too.
    FailedUncertain = 4,
    Compensating = 5,
    Compensated = 6,
}

impl StepState {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => StepState::NotStarted,
            1 => StepState::Started,
            2 => StepState::Done,
            3 => StepState::Failed,
            4 => StepState::FailedUncertain,
            5 => StepState::Compensating,
            6 => StepState::Compensated,
            _ => return None,
        })
    }
}

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Forward,
    Compensating,
    Finished(End),
}

/// Everything the log says about one saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub id: TxId,
    pub definition: String,
    pub input: String,
    pub deadline_at_ms: u64,
    pub steps: Vec<StepState>,
    /// Steps in the order their `StepDone` records were written.
    pub done_order: Vec<u16>,
    pub phase: Phase,
    /// Why the saga is compensating, or why it is stuck.
    pub failure: Option<String>,
}

impl Row {
    /// Steps to compensate, in order: steps of unknown outcome first (latest
    /// index first), then completed steps in reverse order of completion.
    pub(crate) fn compensation_order(&self) -> Vec<u16> {
        let mut order = Vec::new();
        for (i, state) in self.steps.iter().enumerate().rev() {
            let i = i as u16;
            let uncertain = matches!(state, StepState::Started | StepState::FailedUncertain)
                || (*state == StepState::Compensating && !self.done_order.contains(&i));
            if uncertain {
                order.push(i);
            }
        }
        for &i in self.done_order.iter().rev() {
            if matches!(self.steps.get(usize::from(i)), Some(StepState::Done | StepState::Compensating)) {
                order.push(i);
            }
        }
        order
    }
}

fn step_state(steps: &mut [StepState], saga: TxId, step: u16) -> Result<&mut StepState, String> {
    let n = steps.len();
    steps.get_mut(usize::from(step)).ok_or_else(|| format!("saga {saga}: step {step} of {n}"))
}

/// Saga states, built by applying records in log order.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub rows: HashMap<TxId, Row>,
    /// Completed and compensated sagas, oldest first; forgotten past the limit.
    finished: VecDeque<TxId>,
    pub max_finished: usize,
}

impl Table {
    pub(crate) fn new(max_finished: usize) -> Self {
        Self { rows: HashMap::new(), finished: VecDeque::new(), max_finished }
    }

    /// Sagas not completed or compensated (running, compensating, stuck).
    pub(crate) fn open(&self) -> usize {
        self.rows.len() - self.finished.len()
    }

    pub(crate) fn stuck(&self) -> usize {
        self.rows.values().filter(|r| r.phase == Phase::Finished(End::Stuck)).count()
    }

    /// Applies one record. An error names a record that does not fit the
    /// table (a bug, or a log written by another definition).
    pub(crate) fn apply(&mut self, rec: &Rec) -> Result<(), String> {
        if let Rec::Started { saga, definition, steps, deadline_at_ms, input } = rec {
            if self.rows.contains_key(saga) {
                return Err(format!("saga {saga} started twice"));
            }
            let row = Row {
                id: *saga,
                definition: definition.clone(),
                input: input.clone(),
                deadline_at_ms: *deadline_at_ms,
                steps: vec![StepState::NotStarted; usize::from(*steps)],
                done_order: Vec::new(),
                phase: Phase::Forward,
                failure: None,
            };
            self.rows.insert(*saga, row);
            return Ok(());
        }
        let saga = rec.saga();
        let Some(row) = self.rows.get_mut(&saga) else {
            return Err(format!("{} for unknown saga {saga}", rec.name()));
        };
        match rec {
            Rec::Started { .. } => {}
            Rec::StepStarted { step, .. } => *step_state(&mut row.steps, saga, *step)? = StepState::Started,
            Rec::StepDone { step, .. } => {
                *step_state(&mut row.steps, saga, *step)? = StepState::Done;
                row.done_order.push(*step);
            }
            Rec::StepFailed { step, uncertain, reason, .. } => {
                *step_state(&mut row.steps, saga, *step)? =
                    if *uncertain { StepState::FailedUncertain } else { StepState::Failed };
                if row.phase == Phase::Forward {
                    row.phase = Phase::Compensating;
                    row.failure = Some(reason.clone());
                }
            }
            Rec::DeadlineExceeded { .. } => {
                if row.phase == Phase::Forward {
                    row.phase = Phase::Compensating;
                    row.failure = Some("the saga's deadline passed".into());
                }
            }
            Rec::CompStarted { step, .. } => *step_state(&mut row.steps, saga, *step)? = StepState::Compensating,
            Rec::CompDone { step, .. } => *step_state(&mut row.steps, saga, *step)? = StepState::Compensated,
            Rec::Finished { end, reason, .. } => {
                row.phase = Phase::Finished(*end);
                if *end == End::Stuck {
                    row.failure = Some(reason.clone());
                } else {
                    self.finished.push_back(saga);
                    while self.finished.len() > self.max_finished {
                        if let Some(old) = self.finished.pop_front() {
                            self.rows.remove(&old);
                        }
                    }
                }
            }
            Rec::StuckRetried { .. } => {
                if row.phase == Phase::Finished(End::Stuck) {
                    row.phase = Phase::Compensating;
                }
            }
        }
        Ok(())
    }

    /// Every saga, to start a restarted log from.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.0.extend_from_slice(SNAPSHOT_MAGIC);
        // Finished sagas in finishing order first, so decoding rebuilds the
        // eviction queue; then the open ones.
        let finished: Vec<&Row> = self.finished.iter().filter_map(|id| self.rows.get(id)).collect();
        let open: Vec<&Row> =
            self.rows.values().filter(|r| !matches!(r.phase, Phase::Finished(e) if e != End::Stuck)).collect();
        w.u64((finished.len() + open.len()) as u64);
        for row in finished.into_iter().chain(open) {
            w.u128(row.id.as_u128());
            w.str(&row.definition);
            w.str(&row.input);
            w.u64(row.deadline_at_ms);
            w.u16(row.steps.len() as u16);
            for s in &row.steps {
                w.u8(*s as u8);
            }
            w.u16(row.done_order.len() as u16);
            for s in &row.done_order {
                w.u16(*s);
            }
            let (phase, end) = match row.phase {
                Phase::Forward => (0, 0),
                Phase::Compensating => (1, 0),
                Phase::Finished(end) => (2, end as u8),
            };
            w.u8(phase);
            w.u8(end);
            w.str(row.failure.as_deref().unwrap_or(""));
            w.u8(u8::from(row.failure.is_some()));
        }
        w.0
    }

    pub(crate) fn decode(bytes: &[u8], max_finished: usize) -> Result<Table, DecodeError> {
        let bad = |what| DecodeError { what, offset: 0 };
        if bytes.get(..8) != Some(SNAPSHOT_MAGIC.as_slice()) {
            return Err(bad("saga snapshot magic"));
        }
        let mut r = Reader::new(&bytes[8..], "saga snapshot");
        let mut table = Table::new(max_finished);
        for _ in 0..r.count(30)? {
            let id = TxId::from_u128(r.u128()?);
            let definition = r.str()?;
            let input = r.str()?;
            let deadline_at_ms = r.u64()?;
            let mut steps = Vec::new();
            for _ in 0..r.u16()? {
                steps.push(StepState::from_u8(r.u8()?).ok_or(bad("step state"))?);
            }
            let mut done_order = Vec::new();
            for _ in 0..r.u16()? {
                done_order.push(r.u16()?);
            }
            let (phase, end) = (r.u8()?, r.u8()?);
            let phase = match phase {
                0 => Phase::Forward,
                1 => Phase::Compensating,
                2 => Phase::Finished(End::from_u8(end).ok_or(bad("saga end"))?),
                _ => return Err(bad("saga phase")),
            };
            let failure_text = r.str()?;
            let failure = (r.u8()? != 0).then_some(failure_text);
            if matches!(phase, Phase::Finished(End::Completed | End::Compensated)) {
                table.finished.push_back(id);
            }
            table.rows.insert(id, Row { id, definition, input, deadline_at_ms, steps, done_order, phase, failure });
        }
        r.finish()?;
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Rec> {
        let saga = TxId::from_u128(7 << 64 | 9);
        vec![
            Rec::Started { saga, definition: "order".into(), steps: 3, deadline_at_ms: 12, input: "{}".into() },
            Rec::StepStarted { saga, step: 0 },
            Rec::StepDone { saga, step: 0 },
            Rec::StepFailed {
                saga,
                step: 1,
                attempts: 3,
                cause: FailCause::Exhausted,
                uncertain: true,
                reason: "declined".into(),
            },
            Rec::DeadlineExceeded { saga },
            Rec::CompStarted { saga, step: 0 },
            Rec::CompDone { saga, step: 0 },
            Rec::Finished { saga, end: End::Stuck, step: 0, reason: "x".into() },
            Rec::StuckRetried { saga, reason: "warehouse back".into() },
        ]
    }

    #[test]
    fn records_round_trip_and_truncations_fail() {
        for rec in samples() {
            let bytes = rec.encode();
            assert_eq!(Rec::decode(rec.kind(), &bytes).unwrap(), rec);
            for cut in 0..bytes.len() {
                if let (Rec::StuckRetried { saga, .. }, 16) = (&rec, cut) {
                    // The form written before reasons existed: just the id.
                    let legacy = Rec::decode(rec.kind(), &bytes[..cut]).unwrap();
                    assert_eq!(legacy, Rec::StuckRetried { saga: *saga, reason: String::new() });
                    continue;
                }
                assert!(Rec::decode(rec.kind(), &bytes[..cut]).is_err(), "{rec:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn snapshot_round_trips() {
        let mut table = Table::new(10);
        for rec in samples().iter().take(4) {
            table.apply(rec).unwrap();
        }
        let other = TxId::from_u128(1);
        table
            .apply(&Rec::Started {
                saga: other,
                definition: "d".into(),
                steps: 1,
                deadline_at_ms: 0,
                input: "1".into(),
            })
            .unwrap();
        table.apply(&Rec::Finished { saga: other, end: End::Completed, step: NO_STEP, reason: String::new() }).unwrap();
        let back = Table::decode(&table.encode(), 10).unwrap();
        assert_eq!(back.rows, table.rows);
        assert_eq!(back.open(), 1);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 1u64;
        for len in 0..300usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 56) as u8
                })
                .collect();
            for kind in 0..11 {
                let _ = Rec::decode(kind, &bytes);
            }
            let _ = Table::decode(&bytes, 4);
        }
    }
}
