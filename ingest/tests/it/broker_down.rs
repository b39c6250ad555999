//! Broker down at start: the client retries with backoff (and logs), and
//! connects as soon as a broker appears, with no panic and no lost start-up.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use notiflow_ingest::kafka::wait_for_broker;
use tokio_util::sync::CancellationToken;

use crate::support::fresh_kafka;

fn tansu() -> String {
    std::env::var("TANSU_BIN").unwrap_or_else(|_| {
        format!(
            "{}/.cache/notiflow/tools/bin/tansu",
            std::env::var("HOME").unwrap_or_default()
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn waits_for_a_broker_that_starts_late() {
    let port = free_port();
    let mut kafka = fresh_kafka(1);
    kafka.brokers = format!("127.0.0.1:{port}");
    let shutdown = CancellationToken::new();

    // Nobody listens: it keeps retrying until told to stop, then says so.
    let t = Instant::now();
    let stopper = {
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            s.cancel();
        })
    };
    let err = wait_for_broker(&kafka, &shutdown).await.unwrap_err();
    stopper.await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "it waited, it did not give up early"
    );
    assert!(!err.is_retryable(), "{err}");

    // Start a real broker a moment later: the waiting client gets through.
    let dir = tempfile::tempdir().unwrap();
    let waiting = tokio::spawn({
        let kafka = kafka.clone();
        async move { wait_for_broker(&kafka, &CancellationToken::new()).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut broker = Command::new(tansu())
        .current_dir(dir.path())
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--storage-engine",
            "sqlite://late.db",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu binary (infra/up.sh installs it)");
    let result = tokio::time::timeout(Duration::from_secs(60), waiting).await;
    let _ = broker.kill();
    let _ = broker.wait();
    result.expect("connected within 60 s").unwrap().unwrap();
}
