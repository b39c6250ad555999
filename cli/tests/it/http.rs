//! A minimal HTTP client for the end-to-end tests (HTTP/1.1, one request
//! per connection, `Connection: close`), plus an SSE reader (HTTP/1.0, so
//! the stream ends at close: no chunking to undo). Enough for the API and
//! for ChromeDriver's JSON wire protocol.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A response: status, lower-cased headers, body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn write_head(
    conn: &mut TcpStream,
    version: &str,
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) {
    let mut head = format!("{method} {path} {version}\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).unwrap();
    if let Some(b) = body {
        conn.write_all(b).unwrap();
    }
}

fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_lowercase(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// One request; `body` is sent as JSON.
pub fn request(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    write_head(&mut conn, "HTTP/1.1", method, addr, path, headers, body);
    let mut r = BufReader::new(conn);
    let (status, headers) = read_head(&mut r);
    let mut body = Vec::new();
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    match length {
        // Some servers (ChromeDriver) keep the connection open regardless.
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).unwrap();
        }
        None => {
            r.read_to_end(&mut body).unwrap();
        }
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&raw[start..start + size]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
}

/// One request with a bearer key (None: no credentials).
pub fn send(method: &str, addr: &str, path: &str, key: Option<&str>, body: Option<&[u8]>) -> Resp {
    let auth = key.map(|k| format!("Bearer {k}"));
    let h: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    request(method, addr, path, &h, body)
}

/// GET with a bearer key (None: no credentials).
pub fn get(addr: &str, path: &str, key: Option<&str>) -> Resp {
    send("GET", addr, path, key, None)
}

/// POST JSON with a bearer key.
pub fn post(addr: &str, path: &str, key: Option<&str>, body: &serde_json::Value) -> Resp {
    send("POST", addr, path, key, Some(body.to_string().as_bytes()))
}

/// One SSE event.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// An open event stream.
pub struct Sse {
    pub status: u16,
    reader: BufReader<TcpStream>,
}

impl Sse {
    /// Opens `path` with `key`, resuming after `last_id`.
    pub fn open(addr: &str, path: &str, key: &str, last_id: Option<&str>) -> Sse {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let auth = format!("Bearer {key}");
        let mut h = vec![
            ("Authorization", auth.as_str()),
            ("Accept", "text/event-stream"),
        ];
        if let Some(id) = last_id {
            h.push(("Last-Event-ID", id));
        }
        write_head(&mut conn, "HTTP/1.0", "GET", addr, path, &h, None);
        let mut reader = BufReader::new(conn);
        let (status, _) = read_head(&mut reader);
        Sse { status, reader }
    }

    /// The next event (a comment such as a heartbeat comes back as event
    /// `comment`); None at the end of the stream.
    pub fn next(&mut self) -> Option<Event> {
        let mut ev = Event {
            id: None,
            event: "message".into(),
            data: String::new(),
        };
        let mut seen = false;
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if seen {
                    return Some(ev);
                }
                continue;
            }
            if l.starts_with(':') && !seen {
                ev.event = "comment".into();
                return Some(ev);
            }
            let (field, value) = l.split_once(':').unwrap_or((l, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => ev.id = Some(value.to_string()),
                "event" => ev.event = value.to_string(),
                "data" => ev.data.push_str(value),
                _ => continue,
            }
            seen = true;
        }
    }
}
