//! The HTTP schema registry client against a minimal Confluent-compatible
//! endpoint served on loopback (`GET /schemas/ids/{id}`), including a writer
//! schema the built-in map does not have.

use notiflow_ingest::codec::avro::{put_long, put_str};
use notiflow_ingest::{Decoder, RecordView, SchemaRegistry};
use notiflow_schema::Status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WRITER_V2: &str = r#"{"type":"record","name":"E","fields":[
  {"name":"event_id","type":"string"},{"name":"message_id","type":"string"},
  {"name":"client_id","type":"string"},{"name":"recipient","type":"string"},
  {"name":"status","type":"string"},{"name":"category","type":"string"},
  {"name":"billable","type":"boolean"},{"name":"country","type":"string"},
  {"name":"event_time","type":{"type":"long","logicalType":"timestamp-micros"}},
  {"name":"added_in_v2","type":["null","string"],"default":null}]}"#;

/// Serves `/schemas/ids/42` (v2 schema), 404 for other ids, 500 for id 500.
async fn serve(listener: TcpListener) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/schemas/ids/42" => (
                    "200 OK",
                    serde_json::json!({ "schema": WRITER_V2 }).to_string(),
                ),
                "/schemas/ids/500" => ("500 Internal Server Error", "{}".to_string()),
                _ => (
                    "404 Not Found",
                    r#"{"error_code":40403,"message":"Schema not found"}"#.to_string(),
                ),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/vnd.schemaregistry.v1+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

fn value(schema_id: u32) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&schema_id.to_be_bytes());
    for s in [
        "ev-1",
        "wamid.R",
        "acme",
        "+5511987654321",
        "read",
        "marketing",
    ] {
        put_str(s, &mut v);
    }
    v.push(1);
    put_str("BR", &mut v);
    put_long(1_793_534_400_000_000, &mut v);
    put_long(1, &mut v);
    put_str("new field", &mut v);
    v
}

#[tokio::test]
async fn schemas_come_from_the_registry_by_id() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener));
    let registry = SchemaRegistry::http(&url, std::time::Duration::from_secs(5)).unwrap();
    let mut dec = Decoder::new(registry);
    let (good, unknown) = (value(42), value(7));
    let views = [good.as_slice(), unknown.as_slice()].map(|v| RecordView {
        key: Some(b"wamid.R"),
        value: Some(v),
        content_type: None,
        timestamp: 1_793_534_400_000_000,
    });
    dec.prepare(&views).await.unwrap();
    let ev = dec.decode(&views[0]).unwrap();
    assert_eq!(ev.status, Status::Read);
    assert_eq!(ev.client_id, "acme");
    assert_eq!(
        dec.decode(&views[1]).unwrap_err().code(),
        "unknown_schema_id"
    );

    // A registry that fails is not the record's fault: prepare errors (retry), no reject cached.
    let broken = value(500);
    let view = RecordView {
        value: Some(&broken),
        ..views[0]
    };
    let err = dec.prepare(&[view]).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

/// A registry where id 43 answers 404 to its first request only (a replica
/// that has not seen the registration yet), and id 44 answers 404 until
/// `published` is set; both then serve the v2 schema. Counts requests.
async fn serve_late(
    listener: TcpListener,
    published: std::sync::Arc<std::sync::atomic::AtomicBool>,
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    let first_43 = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let (published, asked, first_43) = (published.clone(), asked.clone(), first_43.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
            asked.fetch_add(1, Ordering::SeqCst);
            let known = match path.as_str() {
                "/schemas/ids/43" => !first_43.swap(false, Ordering::SeqCst),
                "/schemas/ids/44" => published.load(Ordering::SeqCst),
                _ => false,
            };
            let (status, body) = if known {
                (
                    "200 OK",
                    serde_json::json!({ "schema": WRITER_V2 }).to_string(),
                )
            } else {
                ("404 Not Found", r#"{"error_code":40403}"#.to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

fn view(v: &[u8]) -> RecordView<'_> {
    RecordView {
        key: Some(b"wamid.R"),
        value: Some(v),
        content_type: None,
        timestamp: 1_793_534_400_000_000,
    }
}

/// A 404 used to be cached for the process's life: a consumer that asked
/// a moment before the registry had the schema rejected every record of
/// that id for ever, while another group (or a restart) decoded them.
#[tokio::test]
async fn a_schema_the_registry_learns_late_is_decoded_not_rejected_for_ever() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let published = std::sync::Arc::new(AtomicBool::new(false));
    let asked = std::sync::Arc::new(AtomicUsize::new(0));
    tokio::spawn(serve_late(listener, published.clone(), asked.clone()));
    let registry = SchemaRegistry::http(&url, std::time::Duration::from_secs(5)).unwrap();
    let ttl = std::time::Duration::from_millis(1500);
    let mut dec = Decoder::new(registry).with_miss_ttl(ttl);
    let (late, later) = (value(43), value(44));

    // Id 43: 404 once, found on the batch's retry; id 44: not yet there.
    let views = [view(&late), view(&later)];
    dec.prepare(&views).await.unwrap();
    assert_eq!(dec.decode(&views[0]).unwrap().status, Status::Read);
    assert_eq!(
        dec.decode(&views[1]).unwrap_err().code(),
        "unknown_schema_id"
    );

    // Within the miss's lifetime the registry is not asked again.
    let before = asked.load(Ordering::SeqCst);
    dec.prepare(&views).await.unwrap();
    assert_eq!(
        asked.load(Ordering::SeqCst),
        before,
        "a fresh miss is answered from memory"
    );
    assert_eq!(
        dec.decode(&views[1]).unwrap_err().code(),
        "unknown_schema_id"
    );

    // The registry learns id 44; once the miss is older than its lifetime,
    // the next batch asks again and its records decode.
    published.store(true, Ordering::SeqCst);
    tokio::time::sleep(ttl + std::time::Duration::from_millis(100)).await;
    dec.prepare(&views).await.unwrap();
    assert_eq!(dec.decode(&views[1]).unwrap().status, Status::Read);
    assert!(asked.load(Ordering::SeqCst) > before);
}

/// Records with many garbage schema ids cost one bounded wait per batch,
/// not one per id: a poison burst cannot stall its partition.
#[tokio::test]
async fn many_unknown_ids_in_a_batch_share_one_bounded_wait() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener));
    let registry = SchemaRegistry::http(&url, std::time::Duration::from_secs(5)).unwrap();
    let mut dec = Decoder::new(registry);
    let values: Vec<Vec<u8>> = (1000..1050).map(value).collect();
    let views: Vec<RecordView<'_>> = values.iter().map(|v| view(v)).collect();
    let started = std::time::Instant::now();
    dec.prepare(&views).await.unwrap();
    let took = started.elapsed();
    // 50 unknown ids, 2 retries of 0.2 + 0.4 s for all of them together;
    // one wait per id would be 30 s.
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    for v in &views {
        assert_eq!(dec.decode(v).unwrap_err().code(), "unknown_schema_id");
    }
}

/// A registry that knows no id (404), counting requests and the most in
/// flight at once (each answer waits 2 ms, as a registry across a network
/// would).
async fn serve_nothing(
    listener: TcpListener,
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    most: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let (asked, in_flight, most) = (asked.clone(), in_flight.clone(), most.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let _ = sock.read(&mut buf).await;
            asked.fetch_add(1, Ordering::SeqCst);
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            let body = r#"{"error_code":40403}"#;
            let resp = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

/// 10,000 distinct garbage schema ids in one batch (each twice): each id is
/// asked once per round (three rounds: the first and two retries), many at
/// once, every record is then an `unknown_schema_id` reject, and within the
/// miss window nothing is asked again. Before, the ids were asked one after
/// another (30,000 round trips in sequence: minutes across a network).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_garbage_ids_are_asked_once_each_and_at_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (asked, in_flight, most) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    tokio::spawn(serve_nothing(
        listener,
        asked.clone(),
        in_flight,
        most.clone(),
    ));
    let registry = SchemaRegistry::http(&url, std::time::Duration::from_secs(30)).unwrap();
    let mut dec = Decoder::new(registry);
    const IDS: u32 = 10_000;
    let values: Vec<Vec<u8>> = (0..2 * IDS)
        .map(|i| {
            let mut v = vec![0];
            v.extend_from_slice(&(1_000_000 + i % IDS).to_be_bytes());
            v.extend_from_slice(b"garbage");
            v
        })
        .collect();
    let views: Vec<RecordView<'_>> = values
        .iter()
        .map(|v| RecordView {
            key: Some(b"wamid.G"),
            value: Some(v),
            content_type: None,
            timestamp: 1_793_534_400_000_000,
        })
        .collect();
    let t0 = std::time::Instant::now();
    dec.prepare(&views).await.unwrap();
    eprintln!(
        "{} distinct garbage ids: {:?}, {} requests, at most {} at once",
        IDS,
        t0.elapsed(),
        asked.load(Ordering::SeqCst),
        most.load(Ordering::SeqCst)
    );
    assert_eq!(
        asked.load(Ordering::SeqCst),
        3 * IDS as usize,
        "each distinct id asked once per round"
    );
    assert!(
        most.load(Ordering::SeqCst) > 1,
        "the lookups were made one after another"
    );
    for v in &views {
        assert_eq!(dec.decode(v).unwrap_err().code(), "unknown_schema_id");
    }
    dec.prepare(&views).await.unwrap();
    assert_eq!(
        asked.load(Ordering::SeqCst),
        3 * IDS as usize,
        "nothing asked again within the miss window"
    );
}
