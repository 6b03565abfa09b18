//! The operator's resolve rules, in one place: a running coordinator
//! (`coordinator/operator.rs`) and the offline `DataDir`
//! (`datadir.rs`) gather the facts each can see and follow the step
//! this returns. The rules keep atomicity: a commit is settled only where a
//! commit is decided, an abort only where nothing or an abort is decided.

use crate::operator::Resolution;

/// The decision recorded for a transaction, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decided {
    Commit,
    Abort,
}

/// What the resolver knows of one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Facts {
    /// The recorded decision (from the calls still owed, the remembered
    /// outcomes, the log).
    pub decided: Option<Decided>,
    /// Both commit and rollback calls are held for it (an engine bug).
    pub conflicting: bool,
    /// Some participant has not applied the decision yet (a failing,
    /// parked or unacknowledged call; offline: the log leaves it open).
    pub owing: bool,
    /// The log holds its begin record and no decision.
    pub begun: bool,
    /// Older than the idempotency horizon or than the oldest remembered id:
    /// its outcome may be forgotten.
    pub forgettable: bool,
    /// Issued less than the transaction and call timeouts ago: it may
    /// still be running.
    pub maybe_running: bool,
}

/// What the resolution does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing left to do; the note says why.
    Nothing { note: &'static str },
    /// Log the operator's action with a `Done` record and stop calling the
    /// owing participants: the operator made their state match `decided`.
    Settle { decided: Decided, note: &'static str },
    /// Log the operator's action with an `Abort` record: the id is recorded
    /// as aborted by the operator.
    RecordAbort { note: &'static str },
}

/// The step for `resolution` given `facts`, or why it would be unsafe.
pub(crate) fn rule(
    facts: Facts,
    resolution: Resolution,
    horizon_s: u64,
    window: std::time::Duration,
) -> Result<Step, String> {
    if facts.conflicting {
        return Err("the engine holds both commit and rollback calls for it (a bug: report it)".into());
    }
    match (resolution, facts.decided) {
        (Resolution::Commit, Some(Decided::Abort)) => Err("it is decided to roll back; it cannot be committed".into()),
        (Resolution::Commit, None) => Err("no commit decision is recorded, so not every participant is known to have \
                                           voted yes; only an abort is safe"
            .into()),
        (Resolution::Abort, Some(Decided::Commit)) => Err("its commit decision is recorded and participants may have \
                                                           applied it; an abort would break atomicity (fix the stuck \
                                                           participant, then retry-now or resolve --commit)"
            .into()),
        (_, Some(decided)) if !facts.owing => Ok(Step::Nothing {
            note: match decided {
                Decided::Commit => "already committed everywhere",
                Decided::Abort => "already rolled back",
            },
        }),
        (_, Some(decided)) => Ok(Step::Settle { decided, note: "settled without calling the participants again" }),
        (Resolution::Abort, None) if facts.forgettable => Err(format!(
            "it is older than the idempotency horizon ({horizon_s} s) or than the ids whose outcomes are remembered; \
             its outcome may be forgotten"
        )),
        (Resolution::Abort, None) if facts.maybe_running => {
            Err(format!("it was issued less than {window:?} ago and may still be running; try again later"))
        }
        (Resolution::Abort, None) if facts.begun => Ok(Step::RecordAbort {
            note: "no decision was recorded: recorded as aborted; the next open rolls back its branches",
        }),
        (Resolution::Abort, None) => {
            Ok(Step::RecordAbort { note: "no decision was recorded: recorded as aborted by the operator" })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Facts = Facts {
        decided: None,
        conflicting: false,
        owing: false,
        begun: false,
        forgettable: false,
        maybe_running: false,
    };
    const W: std::time::Duration = std::time::Duration::from_secs(35);

    #[test]
    fn a_commit_needs_a_commit_decision_and_an_abort_needs_none() {
        assert!(rule(NONE, Resolution::Commit, 1, W).is_err());
        let committed = Facts { decided: Some(Decided::Commit), owing: true, ..NONE };
        assert!(matches!(rule(committed, Resolution::Commit, 1, W), Ok(Step::Settle { decided: Decided::Commit, .. })));
        assert!(rule(committed, Resolution::Abort, 1, W).unwrap_err().contains("break atomicity"));
        let aborted = Facts { decided: Some(Decided::Abort), ..NONE };
        assert!(rule(aborted, Resolution::Commit, 1, W).is_err());
        assert_eq!(rule(aborted, Resolution::Abort, 1, W), Ok(Step::Nothing { note: "already rolled back" }));
        assert!(matches!(rule(NONE, Resolution::Abort, 1, W), Ok(Step::RecordAbort { .. })));
    }

    #[test]
    fn an_undecided_abort_is_refused_when_its_outcome_may_be_forgotten_or_it_may_run() {
        let old = Facts { forgettable: true, ..NONE };
        assert!(rule(old, Resolution::Abort, 86_400, W).unwrap_err().contains("idempotency horizon (86400 s)"));
        let young = Facts { maybe_running: true, ..NONE };
        assert!(rule(young, Resolution::Abort, 1, W).unwrap_err().contains("may still be running"));
        let conflicting = Facts { conflicting: true, decided: Some(Decided::Commit), ..NONE };
        assert!(rule(conflicting, Resolution::Commit, 1, W).is_err());
    }
}
