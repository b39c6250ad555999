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
