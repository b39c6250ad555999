//! The lake writer as its own process against the real broker, a local
//! warehouse folder or the real S3-compatible server (moto), and a SQLite
//! catalog: reconciliation with the generator's ground truth (read back by
//! notiflow and by PyIceberg), kill -9 at random moments including between
//! writing data files and committing, a zombie writer, and compaction while
//! the writer writes.
//!
//! Each test uses a fresh topic, consumer group, warehouse and catalog.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use notiflow_ingest::KafkaConfig;
use notiflow_loadgen::GroundTruth;
use serde_json::Value;

use crate::procs::{Jitter, Proc, free_port, signal, sigterm_and_wait, wait_timeout};
use crate::{brokers, fresh_topic, http_get, notiflow};

const PARTITIONS: i32 = 8;

/// Counts per (client, day, status).
type Counts = BTreeMap<(String, String, String), u64>;

/// Where the warehouse of a test lives.
enum Store {
    Folder,
    S3 { endpoint: String, bucket: String },
}

/// One test's topic, group, warehouse, catalog, config file and logs.
struct Setup {
    kafka: KafkaConfig,
    dir: tempfile::TempDir,
    config: PathBuf,
    warehouse: String,
    s3_endpoint: Option<String>,
}

impl Setup {
    /// `notiflow report detail --all` over the lake writes one CSV row per
    /// valid event, and `notiflow report runs` lists the run as succeeded.
    fn assert_detail_report_has_every_row(&self, valid_events: u64) {
        let out = self.dir.path().join("reports-out");
        let now = chrono::Utc::now();
        let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let (from, to) = (
            fmt(now - chrono::Duration::days(2)),
            fmt(now + chrono::Duration::hours(1)),
        );
        let run = notiflow()
            .arg("--config")
            .arg(&self.config)
            .env("NOTIFLOW__REPORTS__OUTPUT", &out)
            .args(["report", "detail", "--all", "--from", &from, "--to", &to])
            .args(["--format", "csv", "--quiet"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout).to_string();
        assert!(
            run.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(stdout.contains(&format!("{valid_events} rows")), "{stdout}");
        // <output>/detail/<date>/<run>/: the one run's own folder.
        let only = |dir: &std::path::Path| {
            let entries: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            assert_eq!(entries.len(), 1, "{entries:?}");
            entries[0].clone()
        };
        let dir = only(&only(&out.join("detail")));
        let csv = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "csv"))
            .unwrap();
        let text = std::fs::read_to_string(csv).unwrap();
        assert_eq!(
            text.lines().count() as u64,
            valid_events + 1,
            "rows + header"
        );
        for line in text.lines().skip(1).take(100) {
            let recipient = line.split(',').nth(3).unwrap();
            assert!(
                recipient.starts_with('+') && recipient.contains("**"),
                "masked by default: {line}"
            );
        }
        let runs = notiflow()
            .arg("--config")
            .arg(&self.config)
            .args(["report", "runs"])
            .output()
            .unwrap();
        let runs = String::from_utf8_lossy(&runs.stdout);
        assert!(
            runs.contains("\"job\":\"on-demand\"") && runs.contains("\"status\":\"succeeded\""),
            "{runs}"
        );
    }

    fn new(tag: &str, store: Store, commit_interval_ms: u64) -> Setup {
        Setup::with_catalog(tag, store, commit_interval_ms, None)
    }

    /// Like `new`; `catalog` is a catalog URI and name instead of a SQLite
    /// file in the test's folder.
    fn with_catalog(
        tag: &str,
        store: Store,
        commit_interval_ms: u64,
        catalog: Option<(String, String)>,
    ) -> Setup {
        let topic = fresh_topic(tag);
        let dir = tempfile::tempdir().unwrap();
        let (catalog_uri, catalog_name) = catalog.unwrap_or_else(|| {
            (
                format!("sqlite://{}", dir.path().join("catalog.db").display()),
                "notiflow".into(),
            )
        });
        let group = format!("lake-{}", topic.replace('.', "_"));
        let (warehouse, s3) = match &store {
            Store::Folder => (dir.path().join("warehouse").display().to_string(), None),
            Store::S3 { endpoint, bucket } => {
                (format!("s3://{bucket}/warehouse"), Some(endpoint.clone()))
            }
        };
        let config = dir.path().join("notiflow.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[kafka]
brokers = "{brokers}"
topic = "{topic}"
dlq_topic = "{topic}.dlq"
partitions = {PARTITIONS}

[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"

[lake]
group_id = "{group}"
warehouse = "{warehouse}"
catalog_uri = "{catalog_uri}"
catalog_name = "{catalog_name}"
commit_interval_ms = {commit_interval_ms}
flush_rows = 4096

[lake.s3]
endpoint = "{endpoint}"
region = "us-east-1"
access_key_id = "notiflow"
secret_access_key = "notiflow"
path_style = true

[metrics]
listen = ""
"#,
                brokers = brokers(),
                endpoint = s3.clone().unwrap_or_default(),
            ),
        )
        .unwrap();
        Setup {
            kafka: KafkaConfig {
                brokers: brokers(),
                topic: topic.clone(),
                dlq_topic: format!("{topic}.dlq"),
                partitions: PARTITIONS,
                properties: Default::default(),
            },
            dir,
            config,
            warehouse,
            s3_endpoint: s3,
        }
    }

    fn truth_path(&self) -> PathBuf {
        self.dir.path().join("truth.json")
    }

    fn command(&self) -> Command {
        let mut c = notiflow();
        c.arg("--config").arg(&self.config);
        c
    }

    fn generator(&self, events: u64, rate: Option<&str>) -> Proc {
        crate::generator(&self.config, &self.truth_path(), events, rate)
    }

    /// Starts `notiflow run lake`, its log in `<dir>/lake-<n>.log`.
    fn writer(&self, n: usize, env: &[(&str, &str)]) -> Proc {
        let log = std::fs::File::create(self.dir.path().join(format!("lake-{n}.log"))).unwrap();
        let mut c = self.command();
        c.args(["run", "lake"]).stdout(Stdio::null()).stderr(log);
        for (k, v) in env {
            c.env(k, v);
        }
        Proc(c.spawn().unwrap())
    }

    fn log(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("lake-{n}.log"))).unwrap_or_default()
    }

    /// Runs `notiflow lake <action>` to completion; its stdout.
    fn lake(&self, action: &str, env: &[(&str, &str)]) -> String {
        lake_action(&self.config, action, env)
    }

    /// The next offset committed in the table per partition (0 when none).
    fn committed(&self) -> Vec<i64> {
        committed(&self.config, &self.kafka)
    }

    /// Waits until the table has committed every partition up to its high watermark.
    fn wait_drained(&self, timeout: Duration) {
        wait_committed(&self.config, &self.kafka, timeout, String::new);
    }

    fn stats(&self) -> Value {
        serde_json::from_str(&self.lake("stats", &[])).unwrap()
    }

    /// Day partition → (files, bytes).
    fn files(&self) -> BTreeMap<i64, (u64, u64)> {
        let v: Value = serde_json::from_str(&self.lake("files", &[])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["day"].as_i64().unwrap(),
                    (d["files"].as_u64().unwrap(), d["bytes"].as_u64().unwrap()),
                )
            })
            .collect()
    }

    /// The ground truth's distinct events per client × UTC day × status.
    fn truth_counts(&self) -> (GroundTruth, Counts) {
        let truth = GroundTruth::read(&self.truth_path()).unwrap();
        let mut want = Counts::new();
        for c in &truth.minute_counts {
            *want
                .entry((
                    c.client_id.clone(),
                    c.minute[..10].to_string(),
                    c.status.as_str().to_string(),
                ))
                .or_default() += c.count;
        }
        (truth, want)
    }

    /// The table holds every valid event once: rows per client × day ×
    /// status equal the ground truth, and no Kafka record is in it twice.
    /// Returns the stats.
    fn assert_matches_truth(&self) -> Value {
        let (truth, want) = self.truth_counts();
        let stats = self.stats();
        let got = counts_of(&stats["counts"]);
        crate::assert_same_cells(&want, &got, "table vs ground truth");
        assert!(truth.valid_events > 0 && truth.duplicates > 0);
        assert_eq!(stats["rows"].as_u64(), Some(truth.valid_events));
        assert_eq!(
            stats["distinct_offsets"], stats["rows"],
            "a record written twice"
        );
        stats
    }

    /// PyIceberg, through the same SQLite catalog, sees the same rows.
    fn assert_pyiceberg_agrees(&self) {
        let v = pyiceberg_read(
            &self.dir.path().join("catalog.db"),
            &self.warehouse,
            self.s3_endpoint.as_deref(),
            false,
        );
        let (truth, want) = self.truth_counts();
        assert_eq!(v["rows"].as_u64(), Some(truth.valid_events));
        crate::assert_same_cells(&want, &counts_of(&v["counts"]), "PyIceberg vs ground truth");
    }
}

/// Runs `notiflow --config <config> lake <action>` with `env` to completion;
/// its stdout.
pub(crate) fn lake_action(config: &Path, action: &str, env: &[(&str, &str)]) -> String {
    let mut c = notiflow();
    c.arg("--config").arg(config).args(["lake", action]);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "lake {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The next offset committed in the table per partition (0 when none).
pub(crate) fn committed(config: &Path, kafka: &KafkaConfig) -> Vec<i64> {
    let v: Value = serde_json::from_str(&lake_action(config, "offsets", &[])).unwrap();
    (0..kafka.partitions)
        .map(|p| v[&kafka.topic][p.to_string()].as_i64().unwrap_or(0))
        .collect()
}

/// Waits until the table has committed every partition up to its high
/// watermark; `context` (logs, say) goes into the failure message.
pub(crate) fn wait_committed(
    config: &Path,
    kafka: &KafkaConfig,
    timeout: Duration,
    context: impl Fn() -> String,
) {
    let highs = crate::highs(kafka);
    let give_up = Instant::now() + timeout;
    loop {
        let committed = committed(config, kafka);
        if committed == highs {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "not drained: committed {committed:?}, highs {highs:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What PyIceberg reads through the SQLite catalog `catalog_db`: `rows` and
/// `counts` as `[client, day, status, n]` (`day` is the UTC minute,
/// `YYYY-MM-DDTHH:MM:00Z`, when `by_minute`).
pub(crate) fn pyiceberg_read(
    catalog_db: &Path,
    warehouse: &str,
    s3_endpoint: Option<&str>,
    by_minute: bool,
) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/pyiceberg_read.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let warehouse = if warehouse.starts_with("s3://") {
        warehouse.to_string()
    } else {
        format!("file://{warehouse}")
    };
    let mut c = Command::new(python);
    c.arg(script);
    if by_minute {
        c.arg("--by-minute");
    }
    c.arg(catalog_db).arg(warehouse);
    if let Some(e) = s3_endpoint {
        c.arg(e);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "pyiceberg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn counts_of(v: &Value) -> Counts {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |i: usize| r[i].as_str().unwrap().to_string();
            ((s(0), s(1), s(2)), r[3].as_u64().unwrap())
        })
        .collect()
}

/// A bucket on the S3-compatible server of `infra/up.sh` (`S3_ENDPOINT`).
fn s3_bucket(tag: &str) -> Store {
    let endpoint = std::env::var("S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9000".into());
    let bucket = fresh_topic(tag).replace('.', "-").to_lowercase();
    let ok = Command::new("curl")
        .args(["-sf", "-X", "PUT", &format!("{endpoint}/{bucket}")])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot create bucket {bucket} at {endpoint}");
    Store::S3 { endpoint, bucket }
}

#[test]
fn lake_rows_reconcile_and_pyiceberg_reads_them() {
    let s = Setup::new("lake-rec", Store::Folder, 2000);
    let mut generator = s.generator(40_000, None);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut w = s.writer(0, &[("NOTIFLOW__METRICS__LISTEN", listen.as_str())]);
    assert!(generator.wait().unwrap().success());
    s.wait_drained(Duration::from_secs(120));
    let metrics = http_get(&listen, "/metrics");
    assert!(sigterm_and_wait(&mut w).success(), "{}", s.log(0));
    let (truth, _) = s.truth_counts();
    let series = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{metrics}"))
    };
    assert_eq!(
        series("notiflow_lake_rows_committed_total") as u64,
        truth.valid_events
    );
    assert!(series("notiflow_lake_commits_total{outcome=\"committed\"}") >= 1.0);
    assert!(series("notiflow_lake_commit_seconds_count") >= 1.0);
    assert!(series("notiflow_lake_files_per_commit_count") >= 1.0);
    assert!(series("notiflow_lake_bytes_per_commit_sum") > 0.0);
    assert!(metrics.contains("notiflow_lake_consumer_lag{partition="));
    s.assert_matches_truth();
    s.assert_pyiceberg_agrees();
    s.assert_detail_report_has_every_row(truth.valid_events);
}

#[test]
fn the_lake_on_a_postgres_catalog_reconciles() {
    let url = std::env::var("POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    // Each run is its own catalog (the catalog_name column) in the shared database.
    let name = fresh_topic("pg").replace(['.'], "_");
    let s = Setup::with_catalog("lake-pg", Store::Folder, 1000, Some((url, name)));
    let mut generator = s.generator(10_000, None);
    let mut w = s.writer(0, &[]);
    assert!(generator.wait().unwrap().success());
    s.wait_drained(Duration::from_secs(120));
    assert!(sigterm_and_wait(&mut w).success(), "{}", s.log(0));
    s.assert_matches_truth();
}

/// A TCP proxy in front of the S3 server that the test can cut: while cut,
/// open connections are reset and new ones closed at once.
struct Proxy {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(target: String) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, open2) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                open2.lock().unwrap().push(client.try_clone().unwrap());
                open2.lock().unwrap().push(server.try_clone().unwrap());
                let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Proxy { port, up, open }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn an_object_store_outage_loses_nothing() {
    let Store::S3 { endpoint, bucket } = s3_bucket("lake-outage") else {
        unreachable!()
    };
    let proxy = Proxy::start(endpoint.trim_start_matches("http://").to_string());
    let via_proxy = format!("http://127.0.0.1:{}", proxy.port);
    let s = Setup::new(
        "lake-outage",
        Store::S3 {
            endpoint: via_proxy,
            bucket,
        },
        1000,
    );
    let mut generator = s.generator(30_000, Some("3000/s"));
    let mut w = s.writer(0, &[]);
    let give_up = Instant::now() + Duration::from_secs(60);
    while s.committed().iter().sum::<i64>() < 3000 {
        assert!(Instant::now() < give_up, "nothing committed:\n{}", s.log(0));
        std::thread::sleep(Duration::from_millis(200));
    }
    proxy.cut();
    let down = Instant::now();
    let give_up = down + Duration::from_secs(90);
    while !s.log(0).contains("round failed") || down.elapsed() < Duration::from_secs(3) {
        assert!(
            Instant::now() < give_up,
            "the outage was not seen:\n{}",
            s.log(0)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    proxy.restore();
    assert!(generator.wait().unwrap().success());
    s.wait_drained(Duration::from_secs(180));
    assert!(sigterm_and_wait(&mut w).success(), "{}", s.log(0));
    s.assert_matches_truth();
}

#[test]
fn the_lake_on_s3_reconciles_and_compacts() {
    let s = Setup::new("lake-s3", s3_bucket("lake-s3"), 1500);
    let mut generator = s.generator(20_000, Some("5000/s"));
    let mut w = s.writer(0, &[]);
    assert!(generator.wait().unwrap().success());
    s.wait_drained(Duration::from_secs(120));
    assert!(sigterm_and_wait(&mut w).success(), "{}", s.log(0));
    let before = s.assert_matches_truth();
    s.assert_pyiceberg_agrees();
    let files = s.files();
    assert!(
        files.values().any(|f| f.0 > 1),
        "several commits, several files: {files:?}"
    );
    let out = s.lake("compact", &[]);
    eprintln!("{out}");
    let after = s.stats();
    assert_eq!(after["checksum"], before["checksum"]);
    assert!(s.files().values().all(|f| f.0 == 1), "{:?}", s.files());
    s.assert_pyiceberg_agrees();
}

#[test]
fn kill_9_at_random_moments_neither_loses_nor_duplicates_rows() {
    let s = Setup::new("lake-crash", Store::Folder, 1000);
    let mut generator = s.generator(60_000, Some("4000/s"));
    let mut jitter = Jitter::new();
    // First life: aborts between writing its 2nd round's data files and
    // committing them; second life: right after its 1st commit.
    for (n, fp) in [(0, "lake.after_files:2"), (1, "lake.after_commit:1")] {
        let mut w = s.writer(n, &[("NOTIFLOW_FAILPOINT", fp)]);
        // The failpoint is reached when the writer got that far, however
        // busy the broker is (60 s ran out on a shared machine): the bound
        // only turns a hang into a failure with this test's name.
        let status = wait_timeout(&mut w, Duration::from_secs(240));
        assert!(
            !status.success(),
            "the failpoint should abort: {status:?}\n{}",
            s.log(n)
        );
        assert!(
            s.log(n).contains("failpoint reached: aborting"),
            "{}",
            s.log(n)
        );
    }
    let mut kills = 2;
    while kills < 6 || generator.try_wait().unwrap().is_none() {
        let mut w = s.writer(kills, &[]);
        let life = jitter.millis(800, 4000);
        eprintln!("life {kills}: kill -9 after {life:?}");
        std::thread::sleep(life);
        signal(&w, "-KILL");
        w.wait().unwrap();
        kills += 1;
    }
    assert!(generator.wait().unwrap().success());
    // tansu 0.6 drops a dead member only at a rebalance after its session
    // timed out (6 s): joining sooner would leave its partitions orphaned.
    std::thread::sleep(Duration::from_secs(7));
    let mut last = s.writer(kills, &[]);
    s.wait_drained(Duration::from_secs(180));
    assert!(sigterm_and_wait(&mut last).success());
    eprintln!("{kills} kills");
    let before = s.assert_matches_truth();
    // The aborted round's files are orphans; maintenance removes them and
    // changes no row. Run it two hours later (libfaketime), past the
    // orphan grace (60 min), rather than wait or set a grace that could
    // delete a commit in flight.
    let out = s.lake("compact", &faketime("+2h"));
    let orphans: u64 = out
        .split("removed ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no orphan count in {out:?}"));
    assert!(orphans > 0, "{out}");
    let after = s.assert_matches_truth();
    assert_eq!(after["checksum"], before["checksum"]);
}

#[test]
fn a_zombie_writer_cannot_commit() {
    let s = Setup::new("lake-zombie", Store::Folder, 1000);
    let mut generator = s.generator(50_000, Some("4000/s"));
    let mut a = s.writer(0, &[]);
    // b stops itself holding its 2nd round's files, just before committing.
    let mut b = s.writer(1, &[("NOTIFLOW_FAILPOINT", "lake.stop_before_commit:2")]);
    let give_up = Instant::now() + Duration::from_secs(90);
    while !s.log(1).contains("failpoint reached: stopping") {
        assert!(Instant::now() < give_up, "b never stopped:\n{}", s.log(1));
        std::thread::sleep(Duration::from_millis(100));
    }
    let snapshot = s.committed();
    // Past b's session timeout, a new member joins and b's partitions move.
    std::thread::sleep(Duration::from_secs(7));
    let mut c = s.writer(2, &[]);
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        let now = s.committed();
        if now.iter().zip(&snapshot).all(|(n, was)| n > was) {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "partitions never moved on: {snapshot:?} → {now:?}\n{}\n{}",
            s.log(0),
            s.log(2)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    signal(&b, "-CONT");
    assert!(generator.wait().unwrap().success());
    s.wait_drained(Duration::from_secs(180));
    for (n, p) in [(0, &mut a), (1, &mut b), (2, &mut c)] {
        assert!(sigterm_and_wait(p).success(), "{}", s.log(n));
    }
    assert!(
        s.log(1).contains("commit fenced"),
        "the zombie's commit was not fenced:\n{}",
        s.log(1)
    );
    s.assert_matches_truth();
}

#[test]
fn compaction_while_the_writer_writes_keeps_every_row() {
    let s = Setup::new("lake-compact", Store::Folder, 1000);
    let mut generator = s.generator(40_000, Some("4000/s"));
    let mut w = s.writer(0, &[]);
    let mut compactions = 0;
    while generator.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_secs(3));
        eprintln!("{}", s.lake("compact", &[]));
        compactions += 1;
    }
    assert!(compactions >= 2, "the generator finished too soon");
    s.wait_drained(Duration::from_secs(120));
    let before = s.assert_matches_truth();
    let files_before = s.files();
    // Once more with the writer running (idle now): one file per day is
    // left, every row kept.
    let out = s.lake("compact", &[]);
    eprintln!("{out}");
    assert!(sigterm_and_wait(&mut w).success(), "{}", s.log(0));
    let after = s.assert_matches_truth();
    assert_eq!(after["checksum"], before["checksum"]);
    let files_after = s.files();
    eprintln!("files per day before {files_before:?}, after {files_after:?}");
    assert!(files_after.values().all(|f| f.0 == 1), "{files_after:?}");
}

/// The environment that runs a process `offset` (`+2h`) from now on the
/// wall clock, through Debian's libfaketime (`infra/up.sh --for tests`
/// installs it); its monotonic clock stays real.
pub(crate) fn faketime(offset: &'static str) -> [(&'static str, &'static str); 3] {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        std::path::Path::new(lib).exists(),
        "{lib} missing: infra/up.sh --for tests installs faketime"
    );
    [
        ("LD_PRELOAD", lib),
        ("FAKETIME", offset),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]
}

/// Produces `n` valid sent events stamped now on `partition`.
fn produce_on(kafka: &KafkaConfig, partition: i32, n: usize, tag: &str) {
    produce_on_at(
        kafka,
        partition,
        n,
        tag,
        notiflow_ingest::source::now_micros(),
    );
}

/// [`produce_on`], the events and their record timestamps at `now` (micros).
fn produce_on_at(kafka: &KafkaConfig, partition: i32, n: usize, tag: &str, now: i64) {
    use notiflow_schema::{Category, Country, Event, Status};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = notiflow_ingest::kafka::client_config(kafka)
        .create()
        .unwrap();
    for i in 0..n {
        let message_id = format!("wamid.{tag}.{partition}.{i}.{now}");
        let ev = Event {
            event_id: format!("ev.{message_id}").into(),
            message_id: message_id.as_str().into(),
            client_id: "idle".into(),
            recipient: "+5511987654321".into(),
            status: Status::Sent,
            category: Category::Utility,
            billable: true,
            country: Country::parse("BR").unwrap(),
            template: None,
            event_time: now,
            error_code: None,
            pricing_type: None,
        };
        let mut value = Vec::new();
        notiflow_ingest::codec::json::encode(&ev, &mut value);
        let rec: BaseRecord<'_, str, [u8]> = BaseRecord::to(&kafka.topic)
            .partition(partition)
            .key(message_id.as_str())
            .payload(value.as_slice())
            .timestamp(now / 1000);
        p.send(rec).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// Completeness covers every partition of the topic and moves for idle
/// ones while the writer is busy (issue 31). Before, a writer that
/// committed a round at least every `watermark_interval_ms` never ran its
/// heartbeat, so a partition that went quiet kept its last record's
/// watermark and held billing back until it got a record; and a partition
/// that never committed (an empty log here) was left out of completeness
/// altogether.
#[test]
fn a_busy_writer_moves_its_idle_partitions_watermarks_and_counts_every_partition() {
    let s = Setup::new("lake-idle", Store::Folder, 1000);
    // No heartbeat of its own in this test: only the rounds carry them.
    let mut w = s.writer(0, &[("NOTIFLOW__LAKE__WATERMARK_INTERVAL_MS", "3600000")]);
    let give_up = Instant::now() + Duration::from_secs(60);
    while !s.log(0).contains("partition assigned") {
        assert!(Instant::now() < give_up, "no assignment:\n{}", s.log(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats = || -> Value { serde_json::from_str(&s.lake("stats", &[])).unwrap() };
    let mark = |v: &Value, p: i32| v["watermarks"][&s.kafka.topic][p.to_string()].as_i64();
    // Partition 2's last events are five days old: its dedup window would
    // pin snapshot expiry there (issue 30, hole 6).
    let five_days_ago = notiflow_ingest::source::now_micros() - 5 * 86_400_000_000;
    produce_on_at(&s.kafka, 2, 5, "old", five_days_ago);
    // Partition 1 gets records, then goes quiet.
    produce_on(&s.kafka, 1, 10, "quiet");
    let give_up = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let v = stats();
        if v["offsets"][&s.kafka.topic]["1"].as_i64() == Some(10) {
            break v;
        }
        assert!(
            Instant::now() < give_up,
            "p1 not committed: {v}\n{}",
            s.log(0)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let quiet_mark = mark(&first, 1).expect("p1 has a watermark");
    // Partition 0 stays busy; partition 1's watermark must follow.
    let give_up = Instant::now() + Duration::from_secs(60);
    let busy = loop {
        produce_on(&s.kafka, 0, 20, "busy");
        std::thread::sleep(Duration::from_millis(400));
        let v = stats();
        if mark(&v, 1).is_some_and(|m| m > quiet_mark + 1000) {
            break v;
        }
        assert!(
            Instant::now() < give_up,
            "the quiet partition's watermark stayed at {quiet_mark}: {}\n{}",
            v["watermarks"],
            s.log(0)
        );
    };
    // Every partition of the topic counts: the empty ones are committed
    // at offset 0 with a watermark, none is left out.
    for p in 0..PARTITIONS {
        assert!(
            busy["offsets"][&s.kafka.topic][p.to_string()].is_i64(),
            "p{p} has no offset: {}",
            busy["offsets"]
        );
        assert!(mark(&busy, p).is_some(), "p{p}: {}", busy["watermarks"]);
    }
    let held = &busy["complete_until"];
    assert!(held["until_ms"].is_i64(), "{held}");
    assert!(sigterm_and_wait(&mut w).success(), "{}", s.log(0));
    // The writer checkpointed partition 2's whole window (its restore, and
    // expiry, look no further back), and only it: partition 1's window
    // reaches back minutes, not days.
    let whole = checkpointed(Path::new(&s.warehouse), &s.kafka.topic);
    assert!(
        whole.contains(&2),
        "partition 2 never checkpointed: {whole:?}"
    );
    assert!(!whole.contains(&1) && !whole.contains(&0), "{whole:?}");
}

/// The partitions of `topic` that any snapshot of the table under the
/// local `warehouse` checkpointed (`notiflow.dedup-whole`), read from its
/// newest metadata file.
fn checkpointed(warehouse: &Path, topic: &str) -> std::collections::BTreeSet<i32> {
    fn metadata_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                metadata_files(&path, out);
            } else if path.to_string_lossy().ends_with(".metadata.json") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    metadata_files(warehouse, &mut files);
    let newest = files
        .iter()
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("a metadata file");
    let md: Value = serde_json::from_slice(&std::fs::read(newest).unwrap()).unwrap();
    let mut out = std::collections::BTreeSet::new();
    for snap in md["snapshots"].as_array().into_iter().flatten() {
        if let Some(v) = snap["summary"]["notiflow.dedup-whole"].as_str() {
            let m: BTreeMap<String, Vec<i32>> = serde_json::from_str(v).unwrap();
            out.extend(m.get(topic).into_iter().flatten());
        }
    }
    out
}
