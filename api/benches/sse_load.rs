//! Live-stream load: opens N concurrent `GET /v1/stream` connections to a
//! running API (spread over several 127.0.0.x source addresses, so more
//! than one address's ephemeral ports), each following one of CLIENTS
//! clients, and measures how late each delta arrives after the
//! aggregator applied it (the delta's `t`), plus the server's RSS per
//! stream. Needs `ulimit -n` above N in both processes.
//!
//! ```text
//! cargo bench -p notiflow-api --bench sse_load -- ADDR N KEY [CLIENTS=1000] [SOURCES=4] [SECS=60] [SERVER_PID]
//! ```

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;

fn rss_mib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[derive(Default)]
struct Stats {
    connected: AtomicU64,
    failed: AtomicU64,
    ended: AtomicU64,
    frames: AtomicU64,
}

fn main() {
    let args = notiflow_loadgen::bench::args();
    if args.len() < 3 {
        eprintln!("usage: sse_load ADDR N KEY [CLIENTS] [SOURCES] [SECS] [SERVER_PID]");
        std::process::exit(2);
    }
    let server: SocketAddr = args[0].parse().expect("ADDR host:port");
    let n: usize = args[1].parse().expect("N");
    let key = args[2].clone();
    let clients: usize = args.get(3).map_or(1000, |s| s.parse().unwrap());
    let sources: u8 = args.get(4).map_or(4, |s| s.parse().unwrap());
    let secs: u64 = args.get(5).map_or(60, |s| s.parse().unwrap());
    let pid = args.get(6).cloned();
    let rss0 = pid.as_deref().map_or(0.0, rss_mib);
    let rt = notiflow_loadgen::bench::runtime();
    let stats = Arc::new(Stats::default());
    // Lateness of every delta frame, milliseconds (bounded: sampled).
    let lags = Arc::new(std::sync::Mutex::new(Vec::<i64>::with_capacity(4_000_000)));
    rt.block_on(async {
        let t0 = Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % sources as usize) as u8));
            let client = format!("client-{:05}", i % clients);
            let (key, stats, lags) = (key.clone(), stats.clone(), lags.clone());
            tasks.push(tokio::spawn(async move {
                let sock = TcpSocket::new_v4().unwrap();
                if sock.bind(SocketAddr::new(src, 0)).is_err() {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let Ok(mut conn) = sock.connect(server).await else {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let req = format!(
                    "GET /v1/stream?client={client} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
                );
                if conn.write_all(req.as_bytes()).await.is_err() {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let mut r = BufReader::new(conn);
                let mut line = String::new();
                if r.read_line(&mut line).await.is_err() || !line.contains(" 200 ") {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                stats.connected.fetch_add(1, Ordering::Relaxed);
                let sample = i % 10 == 0;
                loop {
                    line.clear();
                    match r.read_line(&mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    // Chunked framing lines are skipped; SSE data lines parsed.
                    if let Some(rest) = line.strip_prefix("data: {\"t\":") {
                        stats.frames.fetch_add(1, Ordering::Relaxed);
                        if sample
                            && let Some(t) = rest.split(',').next().and_then(|s| s.parse::<i64>().ok())
                        {
                            let now = chrono::Utc::now().timestamp_millis();
                            lags.lock().unwrap().push(now - t);
                        }
                    }
                }
                stats.ended.fetch_add(1, Ordering::Relaxed);
            }));
            // About 2,500 new streams a second: each one's snapshot is a
            // Redis read, and a stampede would only measure the breaker.
            if i % 250 == 249 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Until every stream has connected or failed (or a minute passed).
        let settled = || {
            stats.connected.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed)
        };
        while settled() < n as u64 && t0.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ramp = t0.elapsed();
        let connected = stats.connected.load(Ordering::Relaxed);
        eprintln!("opened {connected} of {n} streams in {:.1} s ({} failed)", ramp.as_secs_f64(), stats.failed.load(Ordering::Relaxed));
        // Warm-up: lateness is measured from here, over `secs`.
        tokio::time::sleep(Duration::from_secs(5)).await;
        lags.lock().unwrap().clear();
        let f0 = stats.frames.load(Ordering::Relaxed);
        let rss_held = pid.as_deref().map_or(0.0, rss_mib);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let frames = stats.frames.load(Ordering::Relaxed) - f0;
        let rss_end = pid.as_deref().map_or(0.0, rss_mib);
        let mut l = std::mem::take(&mut *lags.lock().unwrap());
        l.sort_unstable();
        let q = |p: f64| l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or(-1);
        let live = stats.connected.load(Ordering::Relaxed) - stats.ended.load(Ordering::Relaxed);
        println!("streams: {live} live of {n} asked ({} failed, {} ended)", stats.failed.load(Ordering::Relaxed), stats.ended.load(Ordering::Relaxed));
        println!("delta frames received in {secs} s: {frames} ({:.0}/s)", frames as f64 / secs as f64);
        println!("delta lateness after the Redis apply (ms, sampled 1 in 10 streams, {} frames): p50 {} p99 {} max {}", l.len(), q(0.50), q(0.99), l.last().copied().unwrap_or(-1));
        if pid.is_some() {
            println!(
                "server RSS: {rss0:.0} MiB before, {rss_held:.0} MiB with the streams, {rss_end:.0} MiB at the end; {:.1} KiB per stream",
                (rss_held - rss0) * 1024.0 / live.max(1) as f64
            );
        }
        for t in tasks {
            t.abort();
        }
    });
}
