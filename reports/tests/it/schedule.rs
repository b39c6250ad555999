//! The scheduler: missed runs caught up, one run per slot even with two
//! schedulers, failures recorded and retried with back-off.

use std::sync::Arc;

use notiflow_lake::table::{set_offset, set_watermark};
use notiflow_reports::ledger::{End, Ledger, Status};
use notiflow_reports::report::Lease;
use notiflow_reports::schedule::{Plan, Scheduler, Slot, SlotOutcome, run_job};
use notiflow_reports::{EngineKind, Format, JobConfig, JobKind};
use notiflow_schema::time::DAY_MICROS;
use notiflow_schema::{Category as C, Status as S};
use tokio::sync::watch;

use crate::common::*;

fn job(name: &str) -> JobConfig {
    JobConfig {
        name: name.into(),
        cron: "0 15 0 * * *".into(),
        kind: JobKind::Billing,
        formats: vec![Format::Csv],
        engine: None,
        client: None,
        pii: false,
    }
}

async fn setup(tag: &str) -> (Setup, Ledger) {
    let mut s = Setup::new(Store::Folder, tag);
    s.cfg.jobs = vec![job("daily-billing")];
    s.cfg.scheduler.catch_up_days = 3;
    s.cfg.scheduler.backoff_seconds = 1;
    s.cfg.scheduler.max_attempts = 3;
    s.append(&[ev(
        "e1",
        "m1",
        "acme",
        S::Delivered,
        C::Marketing,
        true,
        "BR",
        "2026-11-21T10:00:00Z",
    )])
    .await;
    let ledger = Ledger::open(&s.lake_cfg.catalog_uri).await.unwrap();
    (s, ledger)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_runs_are_caught_up_once_even_with_two_schedulers() {
    let (s, ledger) = setup("catchup").await;
    let reports = Arc::new(s.reports().await);
    let a = Scheduler::new(reports.clone(), ledger.clone(), "a".into()).unwrap();
    let b = Scheduler::new(reports.clone(), ledger.clone(), "b".into()).unwrap();
    let (_tx, rx) = watch::channel(false);
    let (mut ra, mut rb) = (rx.clone(), rx.clone());
    let n = now();
    let (x, y) = tokio::join!(a.tick(n, &mut ra), b.tick(n, &mut rb));
    let (x, y) = (x.unwrap(), y.unwrap());
    let slots = Plan::of(&job("daily-billing"))
        .unwrap()
        .due(reports.tz(), n - 3 * DAY_MICROS, n, 100)
        .unwrap();
    assert_eq!(slots.len(), 3);
    assert_eq!(x + y, 3, "each missed slot ran once ({x} + {y})");
    let runs = ledger.list(Some("daily-billing"), 10).await.unwrap();
    assert_eq!(runs.len(), 3);
    for r in &runs {
        assert_eq!(r.status, Status::Succeeded, "{r:?}");
        assert_eq!(r.attempts, 1, "{r:?}");
        let outputs: Vec<String> = serde_json::from_str(r.outputs.as_deref().unwrap()).unwrap();
        for o in &outputs {
            assert!(reports.output().exists(o).await.unwrap(), "{o}");
        }
    }
    // Nothing is left to do.
    assert_eq!(a.tick(now(), &mut ra).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_recorded_and_retried_with_backoff() {
    let (mut s, ledger) = setup("retry").await;
    // The output folder is a file: writing fails until it is removed.
    let blocked = s.path("blocked");
    std::fs::write(&blocked, b"not a folder").unwrap();
    s.cfg.output = blocked.display().to_string();
    s.cfg.scheduler.catch_up_days = 1;
    let reports = Arc::new(s.reports().await);
    let sched = Scheduler::new(reports.clone(), ledger.clone(), "me".into()).unwrap();
    let due = *Plan::of(&job("daily-billing"))
        .unwrap()
        .due(reports.tz(), now() - DAY_MICROS, now(), 1)
        .unwrap()
        .last()
        .unwrap();
    let slot = due.at;
    let (_tx, mut rx) = watch::channel(false);
    let out = sched.run_slot(&job("daily-billing"), due).await.unwrap();
    let SlotOutcome::Retrying { error, retry_at } = out else {
        panic!("{out:?}");
    };
    assert!(error.contains("output store"), "{error}");
    let failed = ledger.get("daily-billing", slot).await.unwrap().unwrap();
    assert_eq!((failed.status, failed.attempts), (Status::Retrying, 1));
    // The back-off (1 s, the first attempt) is counted from its end.
    assert_eq!(retry_at, failed.finished_at.unwrap() + 1_000_000);
    std::fs::remove_file(&blocked).unwrap();
    // A tick before the back-off ends leaves it; one after runs it again.
    assert_eq!(sched.tick(retry_at - 1, &mut rx).await.unwrap(), 0);
    let r = ledger.get("daily-billing", slot).await.unwrap().unwrap();
    assert_eq!((r.status, r.attempts), (Status::Retrying, 1));
    assert_eq!(sched.tick(retry_at, &mut rx).await.unwrap(), 1);
    let r = ledger.get("daily-billing", slot).await.unwrap().unwrap();
    assert_eq!(
        (r.status, r.attempts, r.error),
        (Status::Succeeded, 2, None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_at_once_and_is_recorded() {
    let (s, ledger) = setup("input").await;
    std::fs::write(
        s.path("rate-card.toml"),
        "version = \"v\"\ncurrency = \"USD\"\n[[rates]]\ncategory = \"utility\"\ncountry = \"*\"\nprice_micros = 1\nfrom = \"2020-01-01\"\n",
    )
    .unwrap();
    let reports = Arc::new(s.reports().await);
    let sched = Scheduler::new(reports.clone(), ledger.clone(), "me".into()).unwrap();
    // The slot that bills the 21st (the crafted event's day).
    let slot = t("2026-11-22T03:15:00Z");
    let due = Slot {
        at: slot,
        day: day("2026-11-21"),
    };
    let out = sched.run_slot(&job("daily-billing"), due).await.unwrap();
    assert!(
        matches!(&out, SlotOutcome::Failed(e) if e.contains("no price for marketing × BR")),
        "{out:?}"
    );
    let r = ledger.get("daily-billing", slot).await.unwrap().unwrap();
    assert_eq!((r.status, r.attempts), (Status::Failed, 1));
}

/// A failed attempt's back-off is not slept inside the tick: a job whose
/// next attempt is an hour away held every other job (and every later
/// slot) for that hour. Now the tick records it and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_backing_off_holds_no_other_job() {
    let (mut s, ledger) = setup("hold").await;
    // The output folder is a file: every attempt fails (not bad input).
    let blocked = s.path("blocked");
    std::fs::write(&blocked, b"not a folder").unwrap();
    s.cfg.output = blocked.display().to_string();
    s.cfg.scheduler.catch_up_days = 1;
    s.cfg.scheduler.backoff_seconds = 3600;
    s.cfg.jobs = vec![job("billing-a"), job("billing-b")];
    let reports = Arc::new(s.reports().await);
    let sched = Scheduler::new(reports.clone(), ledger.clone(), "me".into()).unwrap();
    let (_tx, mut rx) = watch::channel(false);
    let tick = sched.tick(now(), &mut rx);
    tokio::time::timeout(std::time::Duration::from_secs(60), tick)
        .await
        .expect("a tick waited out a back-off")
        .unwrap();
    for name in ["billing-a", "billing-b"] {
        let runs = ledger.list(Some(name), 10).await.unwrap();
        assert!(!runs.is_empty(), "{name} was not tried");
        for r in runs {
            assert_eq!((r.status, r.attempts), (Status::Retrying, 1), "{name}");
        }
    }
}

/// A slot that failed after all its attempts stays failed: later ticks do
/// not scan the lake for it again every minute (they did, for the whole
/// catch-up week), and the failed-slots gauge tells an operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_failed_for_good_is_not_run_again_by_later_ticks() {
    let (mut s, ledger) = setup("failed").await;
    // The output folder is a file: every attempt fails (not bad input).
    let blocked = s.path("blocked");
    std::fs::write(&blocked, b"not a folder").unwrap();
    s.cfg.output = blocked.display().to_string();
    s.cfg.scheduler.catch_up_days = 1;
    s.cfg.scheduler.max_attempts = 2;
    let registry = prometheus::Registry::new();
    let metrics = notiflow_reports::Metrics::new(&registry).unwrap();
    let reports = Arc::new(s.reports().await.with_metrics(metrics.clone()));
    let sched = Scheduler::new(reports.clone(), ledger.clone(), "me".into()).unwrap();
    let (_tx, mut rx) = watch::channel(false);
    // The first attempt fails and backs off (1 s); the tick after it
    // makes the second and last.
    assert_eq!(sched.tick(now(), &mut rx).await.unwrap(), 0);
    assert_eq!(sched.tick(now() + 2_000_000, &mut rx).await.unwrap(), 1);
    let runs = ledger.list(Some("daily-billing"), 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].status, runs[0].attempts), (Status::Failed, 2));
    let gauge = metrics
        .job_failed_slots
        .with_label_values(&["daily-billing"]);
    assert_eq!(gauge.get(), 1);
    // Later ticks: nothing runs, the attempts stay, the gauge stays up.
    for _ in 0..3 {
        assert_eq!(sched.tick(now(), &mut rx).await.unwrap(), 0);
    }
    let r = ledger
        .get("daily-billing", runs[0].scheduled_for)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.status, r.attempts), (Status::Failed, 2));
    assert_eq!(gauge.get(), 1);

    // The operator fixes the cause and bills the day on demand: that
    // settles the failed slot, and the gauge (its alert) clears.
    std::fs::remove_file(&blocked).unwrap();
    let day = notiflow_reports::schedule::day_for(reports.tz(), r.scheduled_for);
    let m = ledger
        .record(
            "on-demand",
            now(),
            "operator",
            reports.billing(&billing(&day.to_string(), EngineKind::DuckDb), now()),
        )
        .await
        .unwrap();
    let settled =
        notiflow_reports::schedule::settle_failed_slots(&reports, &ledger, &m, "operator")
            .await
            .unwrap();
    assert_eq!(settled, vec!["daily-billing".to_string()]);
    let r = ledger
        .get("daily-billing", r.scheduled_for)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.status, r.error), (Status::Succeeded, None));
    assert!(r.outputs.unwrap().contains(&format!("billing-{day}")));
    assert_eq!(sched.tick(now(), &mut rx).await.unwrap(), 0);
    assert_eq!(gauge.get(), 0, "the alert clears");
}

/// A scheduled billing run that lost its slot to another process (a stall
/// longer than the lease) published its files and manifest anyway: a
/// second, equally valid invoice of the day. Its lease is checked last
/// before the manifest now: it publishes nothing, and the holder does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_lost_its_lease_publishes_nothing() {
    let (s, ledger) = setup("lost").await;
    let reports = Arc::new(s.reports().await);
    let due = Slot {
        at: t("2026-11-22T03:15:00Z"),
        day: day("2026-11-21"),
    };
    // "me" claims with a lease over at once; "other" takes the run over.
    let claim = |owner: &'static str, lease: i64| {
        let ledger = ledger.clone();
        async move {
            ledger
                .claim("daily-billing", due.at, owner, now(), lease, false)
                .await
                .unwrap()
        }
    };
    assert_eq!(claim("me", 1).await, Some(1));
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(claim("other", 60_000_000).await, Some(2));
    let lease = |owner| Lease {
        ledger: &ledger,
        job: "daily-billing",
        slot: due.at,
        owner,
    };
    let manifests = || manifests(std::path::Path::new(&s.cfg.output));
    let err = run_job(
        &reports,
        &job("daily-billing"),
        due,
        now(),
        Some(lease("me")),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("lost the lease"), "{err}");
    assert_eq!(manifests(), 0, "the run that lost its lease published");
    run_job(
        &reports,
        &job("daily-billing"),
        due,
        now(),
        Some(lease("other")),
    )
    .await
    .unwrap();
    assert_eq!(manifests(), 1);
}

/// A day issued on demand (an operator ran it by hand), then late events:
/// the scheduled slot of that day publishes no second invoice and is not a
/// failure (no alert, no retries): it is done, and says by which run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_slot_of_a_day_issued_on_demand_is_done_without_a_second_invoice() {
    let (s, ledger) = setup("issued").await;
    let reports = Arc::new(s.reports().await);
    let by_hand = reports
        .billing(&billing("2026-11-21", EngineKind::DuckDb), now())
        .await
        .unwrap();
    s.append(&[ev(
        "e2",
        "m2",
        "acme",
        S::Delivered,
        C::Marketing,
        true,
        "BR",
        "2026-11-21T11:00:00Z",
    )])
    .await;
    let sched = Scheduler::new(reports.clone(), ledger.clone(), "a".into()).unwrap();
    let slot = t("2026-11-22T03:15:00Z");
    let due = Slot {
        at: slot,
        day: day("2026-11-21"),
    };
    let out = sched.run_slot(&job("daily-billing"), due).await.unwrap();
    assert!(matches!(out, SlotOutcome::Succeeded(1)), "{out:?}");
    let run = ledger.get("daily-billing", slot).await.unwrap().unwrap();
    assert_eq!(run.status, Status::Succeeded, "{run:?}");
    assert!(run.outputs.is_none(), "published: {run:?}");
    let why = run.error.unwrap_or_default();
    let first_run = by_hand.files[0]
        .path
        .rsplit('/')
        .nth(1)
        .unwrap()
        .to_string();
    assert!(why.contains(&format!("issued by run {first_run}")), "{why}");
}

/// A process whose lease ran out learns it when it ends its attempt: the
/// ledger keeps the run of the process that took it over (before, the end
/// was silently dropped and the caller believed it recorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_run_after_losing_its_lease_is_told_not_recorded() {
    let (_s, ledger) = setup("lease").await;
    let slot = t("2026-11-22T03:15:00Z");
    let t0 = t("2026-11-22T03:15:01Z");
    let lease = 10_000_000;
    assert_eq!(
        ledger
            .claim("job", slot, "a", t0, lease, false)
            .await
            .unwrap(),
        Some(1)
    );
    // a stalls past its lease; b takes the run over.
    let later = t0 + 2 * lease;
    assert_eq!(
        ledger
            .claim("job", slot, "b", later, lease, false)
            .await
            .unwrap(),
        Some(2)
    );
    let end = |status| End {
        status,
        at: later + 1,
        outputs: Some("[]"),
        error: None,
    };
    assert!(
        !ledger
            .finish("job", slot, "a", end(Status::Succeeded))
            .await
            .unwrap()
    );
    let r = ledger.get("job", slot).await.unwrap().unwrap();
    assert_eq!((r.status, r.owner.as_str()), (Status::Running, "b"));
    assert!(
        ledger
            .finish("job", slot, "b", end(Status::Succeeded))
            .await
            .unwrap()
    );
    let r = ledger.get("job", slot).await.unwrap().unwrap();
    assert_eq!((r.status, r.owner.as_str()), (Status::Succeeded, "b"));
}

/// The completeness gate: a billing day is billed only from a lake whose
/// every partition is committed past the day's end plus the grace (10
/// minutes by default); until then the slot waits, using no attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billing_day_waits_until_every_partition_is_complete_past_its_end() {
    let (s, ledger) = setup("gate").await;
    let lake = s.lake().await;
    // A writer has committed two partitions of topic `t`; partition 0 up
    // to 03:05 UTC on the 22nd, 5 minutes past the 21st's end in São
    // Paulo (03:00 UTC), partition 1 with no watermark yet.
    let ms = |x: &str| t(x) / 1000;
    set_offset(&lake, "t", 0, 10).await.unwrap();
    set_offset(&lake, "t", 1, 10).await.unwrap();
    set_watermark(&lake, "t", 0, ms("2026-11-22T03:05:00Z"))
        .await
        .unwrap();
    let reports = Arc::new(s.reports().await);
    let sched = Scheduler::new(reports.clone(), ledger.clone(), "me".into()).unwrap();
    let due = Slot {
        at: t("2026-11-22T03:15:00Z"),
        day: day("2026-11-21"),
    };
    let waits = |out: SlotOutcome, want: &str| match out {
        SlotOutcome::Waiting(why) => assert!(why.contains(want), "{why}"),
        other => panic!("not waiting ({want}): {other:?}"),
    };
    let out = sched.run_slot(&job("daily-billing"), due).await.unwrap();
    waits(out, "partition 1 of t has no watermark yet");
    let r = ledger.get("daily-billing", due.at).await.unwrap().unwrap();
    assert_eq!((r.status, r.attempts), (Status::Waiting, 0));
    assert_eq!(r.status.as_str(), "waiting_for_data");
    // Partition 1 passes; partition 0 is still short of 03:10.
    set_watermark(&lake, "t", 1, ms("2026-11-22T04:00:00Z"))
        .await
        .unwrap();
    let out = sched.run_slot(&job("daily-billing"), due).await.unwrap();
    waits(
        out,
        "partition 0 of t is committed up to 2026-11-22T03:05:00.000000Z (broker time); billing day 2026-11-21 needs everything up to 2026-11-22T03:10:00.000000Z",
    );
    assert!(
        ledger.list(Some("daily-billing"), 10).await.unwrap()[0]
            .outputs
            .is_none()
    );
    // Both past 03:10: billed, in its first attempt.
    set_watermark(&lake, "t", 0, ms("2026-11-22T03:10:00Z"))
        .await
        .unwrap();
    let out = sched.run_slot(&job("daily-billing"), due).await.unwrap();
    assert_eq!(out, SlotOutcome::Succeeded(1));
    let r = ledger.get("daily-billing", due.at).await.unwrap().unwrap();
    assert_eq!((r.status, r.attempts), (Status::Succeeded, 1));
}
