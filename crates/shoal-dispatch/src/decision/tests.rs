//! The decision history's bound and order, and the sentences decisions read as.

use std::time::Duration;

use super::*;
use crate::budget::BudgetRefusal;

fn exited(n: usize) -> Decision {
    Decision::InstanceExited {
        instance: format!("f-v1-{n}"),
        reason: "exit code 1".into(),
    }
}

#[test]
fn history_keeps_the_newest_in_order() {
    let mut log = DecisionLog::default();
    for n in 0..DECISION_HISTORY + 7 {
        log.record("f", 1, exited(n));
    }
    let records = log.to_vec();
    assert_eq!(records.len(), DECISION_HISTORY);
    let expected: Vec<Decision> = (7..DECISION_HISTORY + 7).map(exited).collect();
    let got: Vec<Decision> = records.iter().map(|r| r.decision.clone()).collect();
    assert_eq!(got, expected);
    assert!(records
        .windows(2)
        .all(|w| w[0].at_epoch_ms <= w[1].at_epoch_ms));
}

#[test]
fn a_persisting_condition_is_recorded_once() {
    let mut log = DecisionLog::default();
    let refused = |started| Decision::BudgetRefused {
        reason: LaunchReason::Queued {
            waiting: 3,
            starting_capacity: 0,
        },
        started,
        wanted: 3,
        refusal: BudgetRefusal::Instances {
            in_use: 4,
            max_instances: 4,
        },
    };
    for waiting in 1..5 {
        log.record(
            "f",
            1,
            Decision::AtMaxInstances {
                waiting,
                max_instances: 2,
            },
        );
    }
    log.record("f", 1, refused(0));
    log.record("f", 1, refused(0));
    log.record("f", 1, refused(1)); // something was started: news
    log.record("f", 1, Decision::Retired);
    log.record("f", 1, Decision::Retired);
    let kinds: Vec<_> = log.to_vec().iter().map(|r| r.decision.kind()).collect();
    assert_eq!(
        kinds,
        [
            "at_max_instances",
            "budget_refused",
            "budget_refused",
            "retired"
        ]
    );
    assert!(matches!(
        log.to_vec()[0].decision,
        Decision::AtMaxInstances { waiting: 1, .. }
    ));
}

#[test]
fn display_reads_as_a_sentence() {
    let d = Decision::ScaleOut {
        reason: LaunchReason::Queued {
            waiting: 10,
            starting_capacity: 4,
        },
        starting: 2,
        limit: 4,
    };
    assert_eq!(d.kind(), "scale_out");
    assert_eq!(
        d.to_string(),
        "10 waiting beyond 4 starting capacity: starting 2 instance(s) at limit 4"
    );
    let d = Decision::StuckStopped {
        instance: "f-v1-3".into(),
        grace: Duration::from_secs(2),
    };
    assert_eq!(d.instance(), Some("f-v1-3"));
    assert_eq!(
        d.to_string(),
        "instance f-v1-3 still busy 2s after a call's deadline: stopping it"
    );
    let d = Decision::ScaleOutHeld {
        waiting: 12,
        instances: 2,
        wait_ms_per_s: 612.4,
        run_ms_per_s: 201.0,
    };
    assert_eq!((d.kind(), d.instance()), ("scale_out_held", None));
    assert_eq!(
        d.to_string(),
        "host CPU saturated: the 2 ready instance(s) wait 612 ms per s for a core (and run \
         201 ms per s): 12 waiting, starting no more instances (a call that cannot be served \
         before its deadline is refused)"
    );
    let d = Decision::ScaleIn {
        instance: "f-v1-2".into(),
        demand_stable: 7.0,
        demand_panic: 6.96,
        demand_p99: 7.0,
        utilization: 0.95,
        remaining: 1,
        mean_limit: 8.0,
    };
    assert_eq!(
        d.to_string(),
        "demand 7.0 (60 s) / 7.0 (6 s), p99 7.0, fits 1 instance(s) at limit 8 filled to 95% \
         (the headroom its p99 needs): draining f-v1-2"
    );
}
