//! The scheduler: missed runs caught up, one run per slot even with two
//! schedulers, failures recorded and retried with back-off.

use std::sync::Arc;

use notiflow_reports::ledger::{Ledger, Status};
use notiflow_reports::schedule::{Scheduler, SlotOutcome, due, parse_cron};
use notiflow_reports::{Format, JobConfig, JobKind};
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
    let slots = due(
        &parse_cron("0 15 0 * * *").unwrap(),
        reports.tz(),
        n - 3 * DAY_MICROS,
        n,
        100,
    );
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
    let slot = *due(
        &parse_cron("0 15 0 * * *").unwrap(),
        reports.tz(),
        now() - DAY_MICROS,
        now(),
        1,
    )
    .last()
    .unwrap();
    let (_tx, mut rx) = watch::channel(false);
    let fixer = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            // Once the first failure is recorded, unblock the output.
            loop {
                if let Some(r) = ledger.get("daily-billing", slot).await.unwrap()
                    && r.status == Status::Retrying
                {
                    assert!(r.error.is_some());
                    std::fs::remove_file(&blocked).unwrap();
                    return r;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
    };
    let out = sched
        .run_slot(&job("daily-billing"), slot, &mut rx)
        .await
        .unwrap();
    let failed = fixer.await.unwrap();
    assert!(
        failed.error.as_deref().unwrap().contains("output store"),
        "{failed:?}"
    );
    assert_eq!(out, SlotOutcome::Succeeded(2));
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
    let (_tx, mut rx) = watch::channel(false);
    let out = sched
        .run_slot(&job("daily-billing"), slot, &mut rx)
        .await
        .unwrap();
    assert!(
        matches!(&out, SlotOutcome::Failed(e) if e.contains("no price for marketing × BR")),
        "{out:?}"
    );
    let r = ledger.get("daily-billing", slot).await.unwrap().unwrap();
    assert_eq!((r.status, r.attempts), (Status::Failed, 1));
}
