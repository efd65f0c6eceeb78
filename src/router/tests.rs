use super::*;
use crate::classifier::classify;
use crate::config::{AllReplicasDown, Config};

fn router() -> Router {
    let config = Config::from_toml(
        r#"
[mysql]
listen = "127.0.0.1:0"
[[mysql.users]]
name = "app"
password = "app"
[[mysql.backends]]
name = "p"
address = "127.0.0.1:1"
role = "primary"
[[mysql.backends]]
name = "r1"
address = "127.0.0.1:2"
role = "replica"
[[mysql.backends]]
name = "r2"
address = "127.0.0.1:3"
role = "replica"
"#,
    )
    .expect("config");
    Router::new(Arc::new(Backends::from_config(&config)), true, AllReplicasDown::Primary, true)
}

#[test]
fn reads_rotate_over_all_three() {
    let r = router();
    let firsts: Vec<usize> = (0..6).map(|_| r.candidates(Target::ReadPool, &[], 0)[0]).collect();
    assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
}

#[test]
fn failed_backend_goes_last_and_excluded_is_skipped() {
    let r = router();
    r.backends().mark_failed(1, "test");
    for _ in 0..4 {
        let order = r.candidates(Target::ReadPool, &[false, false, true], 0);
        assert_eq!(order.as_slice(), [0, 1], "usable first, failed after, excluded never");
        assert_eq!(r.read_pool(), [0, 2], "session exclusions are not the pool's");
    }
}

#[test]
fn pins_and_session_state_win() {
    let r = router();
    let read = classify("SELECT 1");
    let view = SessionView { pinned: Some(2), ..Default::default() };
    assert_eq!(r.decide(&read, &view).target, Target::Backend(2));
    let view = SessionView { temporary_tables: true, ..Default::default() };
    assert_eq!(r.decide(&read, &view), Decision { target: Target::Primary, reason: Reason::TemporaryTable });
    let view = SessionView { user_variables_on_primary: true, ..Default::default() };
    assert_eq!(r.decide(&classify("SELECT @v"), &view).target, Target::Primary);
    assert_eq!(r.decide(&read, &view).target, Target::ReadPool);
}

#[test]
fn hints() {
    let r = router();
    let view = SessionView::default();
    assert_eq!(r.decide(&classify("SELECT 1 /* rwproxy:primary */"), &view).target, Target::Primary);
    assert_eq!(
        r.decide(&classify("SELECT LAST_INSERT_ID() /* rwproxy:replica */"), &view).target,
        Target::Replica
    );
    assert_eq!(r.decide(&classify("DELETE FROM t /* rwproxy:replica */"), &view).target, Target::Primary);
    // A replica hint never lands on the primary while a replica is usable, though the primary
    // takes reads too (the router of these tests has reads_include_primary).
    for _ in 0..6 {
        let first = r.candidates(Target::Replica, &[], 0)[0];
        assert_ne!(first, 0, "the primary is backend 0");
    }
    let order = r.candidates(Target::Replica, &[], 0);
    assert_eq!(order.last(), Some(&0), "the primary is the last fallback: {order:?}");
}

#[test]
fn transaction_history_needs_evidence_before_new_sessions_start_optimistic() {
    let h = TransactionHistory::default();
    assert!(!h.mostly_read_only(), "no history: prove it first");
    for _ in 0..8 {
        h.record(false);
    }
    assert!(h.mostly_read_only());
    for _ in 0..3 {
        h.record(true);
    }
    assert!(!h.mostly_read_only(), "3 writes in 11");
    for _ in 0..40 {
        h.record(false);
    }
    assert!(h.mostly_read_only(), "old writes leave the window");
}

#[test]
fn weights_give_each_backend_its_share_of_every_round() {
    let r = router().with_weights(vec![1, 1, 2]);
    let firsts: Vec<usize> = (0..8).map(|_| r.candidates(Target::ReadPool, &[], 0)[0]).collect();
    assert_eq!(firsts, [0, 1, 2, 2, 0, 1, 2, 2]);
    // Every candidate still follows the pick (the rest are retries).
    let order = r.candidates(Target::ReadPool, &[], 0);
    assert_eq!(order.as_slice(), [0, 1, 2]);
    // Without the primary the round is r1 once, r2 twice.
    let firsts: Vec<usize> = (0..6).map(|_| r.candidates(Target::Replica, &[], 1)[0]).collect();
    assert_eq!(firsts, [1, 2, 2, 1, 2, 2]);
    // Equal weights rotate as without any.
    let equal = router().with_weights(vec![5, 5, 5]);
    let firsts: Vec<usize> = (0..6).map(|_| equal.candidates(Target::ReadPool, &[], 0)[0]).collect();
    assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
}
