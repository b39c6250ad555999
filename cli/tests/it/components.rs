//! `notiflow run ingest` and `notiflow run reports` as their own processes,
//! as production runs them: each serves its series on `metrics.listen`
//! (the aggregator's, the lake writer's and the API's tests check theirs)
//! and stops on SIGTERM with status 0.

use std::process::Stdio;
use std::time::Duration;

use crate::aggregator::{Setup, redis_url};
use crate::api::append;
use crate::demo::{sample, wait_metrics};
use crate::procs::{Proc, free_port, sigterm_and_wait, wait_timeout};

/// `notiflow run <component>` with its `/metrics` on `addr`, logging to
/// `<component>.log` in the setup's folder.
fn spawn_component(setup: &Setup, component: &str, addr: &str) -> Proc {
    Proc(
        setup
            .command()
            .args(["run", component])
            .env("NOTIFLOW__METRICS__LISTEN", addr)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(setup.dir.path().join(format!("{component}.log"))).unwrap(),
            )
            .spawn()
            .unwrap(),
    )
}

/// How long a component has to show a series.
const WAIT: Duration = Duration::from_secs(120);

#[test]
fn ingest_and_report_processes_serve_their_metrics() {
    let setup = Setup::new("components", redis_url());
    let d = setup.dir.path().display();
    append(
        &setup.config,
        &format!(
            "[lake]\nwarehouse = \"{d}/warehouse\"\ncatalog_uri = \"sqlite://{d}/catalog.db\"\n\n[reports]\noutput = \"{d}/reports\"\n"
        ),
    );

    // The validator: every record counted, poison records by reason, lag.
    let ingest_addr = format!("127.0.0.1:{}", free_port());
    let mut ingest = spawn_component(&setup, "ingest", &ingest_addr);
    let mut generator = setup.generator(3_000, None);
    assert!(wait_timeout(&mut generator, Duration::from_secs(120)).success());
    let records: i64 = crate::highs(&setup.kafka).iter().sum();
    let text = wait_metrics(
        &ingest_addr,
        "ingest did not consume every record",
        WAIT,
        |t| sample(t, "notiflow_ingest_records_total") == Some(records as f64),
    );
    let valid = sample(&text, "notiflow_ingest_valid_total").unwrap();
    let dead: f64 = text
        .lines()
        .filter(|l| l.starts_with("notiflow_ingest_dlq_records_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(dead > 0.0, "1% malformed records were generated:\n{text}");
    assert_eq!(
        valid + dead,
        records as f64,
        "valid + dead-lettered = consumed"
    );
    // Lag comes from librdkafka's statistics (every second): caught up, 0.
    let text = wait_metrics(&ingest_addr, "no lag reported", WAIT, |t| {
        t.lines()
            .filter(|l| l.starts_with("notiflow_ingest_consumer_lag{"))
            .count()
            > 0
    });
    for l in text
        .lines()
        .filter(|l| l.starts_with("notiflow_ingest_consumer_lag{"))
    {
        assert!(l.ends_with(" 0"), "caught up, yet {l}");
    }
    for s in [
        "notiflow_ingest_batch_seconds_bucket",
        "process_resident_memory_bytes",
    ] {
        assert!(sample(&text, s).is_some(), "{s} missing:\n{text}");
    }
    assert!(sigterm_and_wait(&mut ingest).success());

    // The scheduler: its catch-up runs (an empty lake bills zero lines) are
    // timed, and each job shows its failures and last success.
    let reports_addr = format!("127.0.0.1:{}", free_port());
    let mut reports = spawn_component(&setup, "reports", &reports_addr);
    let ok_runs =
        "notiflow_reports_run_seconds_count{engine=\"duckdb\",kind=\"billing\",outcome=\"ok\"}";
    let text = wait_metrics(&reports_addr, "no billing run was timed", WAIT, |t| {
        sample(t, ok_runs).is_some_and(|n| n >= 1.0)
    });
    let job = "{report_job=\"daily-billing\"}";
    assert_eq!(
        sample(&text, &format!("notiflow_reports_job_failures_total{job}")),
        Some(0.0)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = wait_metrics(&reports_addr, "no last success", WAIT, |t| {
        sample(
            t,
            &format!("notiflow_reports_job_last_success_timestamp_seconds{job}"),
        )
        .is_some()
    });
    let at = sample(
        &last,
        &format!("notiflow_reports_job_last_success_timestamp_seconds{job}"),
    )
    .unwrap();
    assert!((now - at).abs() < 300.0, "last success {at}, now {now}");
    assert!(sigterm_and_wait(&mut reports).success());
}
