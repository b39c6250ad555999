//! The web dashboard in a real browser: Debian's headless Chromium, driven
//! through ChromeDriver's WebDriver protocol, opens the page the API
//! serves, signs in with a viewer's key and watches the chart and counts
//! change while the generator's traffic flows through the aggregator. The
//! screenshot is kept in `$CARGO_TARGET_TMPDIR/dashboard.png`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::aggregator::{Setup, redis_url};
use crate::api::{VIEWER, api_section, append, start_api};
use crate::http::{get, post, request};
use crate::procs::{Proc, free_port, wait_timeout};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub(crate) struct Browser {
    driver: String,
    session: String,
    _chromedriver: Proc,
}

impl Browser {
    pub(crate) fn start() -> Browser {
        let port = free_port();
        let driver = format!("127.0.0.1:{port}");
        let chromedriver = Proc(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver (infra/up.sh installs chromium-driver)"),
        );
        let give_up = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&driver).is_err() {
            assert!(Instant::now() < give_up, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"]
            }
        }}});
        let r = post(&driver, "/session", None, &caps);
        assert_eq!(r.status, 200, "new session: {}", r.text());
        let session = r.json()["value"]["sessionId"].as_str().unwrap().to_string();
        Browser {
            driver,
            session,
            _chromedriver: chromedriver,
        }
    }

    pub(crate) fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let r = if method == "GET" {
            get(&self.driver, &path, None)
        } else {
            post(&self.driver, &path, None, &body)
        };
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        r.json()["value"].clone()
    }

    pub(crate) fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        v[ELEMENT].as_str().unwrap().to_string()
    }

    pub(crate) fn script(&self, js: &str) -> Value {
        self.call("POST", "/execute/sync", json!({"script": js, "args": []}))
    }

    pub(crate) fn wait_for(&self, what: &str, js: &str, timeout: Duration) -> Value {
        let give_up = Instant::now() + timeout;
        loop {
            let v = self.script(js);
            if v.as_bool() != Some(false) && !v.is_null() {
                return v;
            }
            assert!(Instant::now() < give_up, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = request("DELETE", &self.driver, &path, &[], None);
    }
}

pub(crate) fn decode_base64(text: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in text.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

pub(crate) const TOTAL: &str =
    "parseInt(document.getElementById('total').textContent.replace(/,/g, ''), 10)";

#[test]
fn the_dashboard_shows_live_counts_in_a_real_browser() {
    let setup = Setup::new("dashboard", redis_url());
    let addr = format!("127.0.0.1:{}", free_port());
    append(&setup.config, &api_section(setup.dir.path(), &addr, ""));
    let _agg = setup.aggregator(0, &[]);
    let _api = start_api(&setup, &addr);
    let mut generator = setup.generator(90_000, Some("3000/s"));

    let b = Browser::start();
    b.call(
        "POST",
        "/url",
        json!({"url": format!("http://{addr}/dashboard/")}),
    );
    let key = b.find("#login-key");
    b.call(
        "POST",
        &format!("/element/{key}/value"),
        json!({"text": VIEWER}),
    );
    let button = b.find("#login-btn");
    b.call("POST", &format!("/element/{button}/click"), json!({}));
    b.wait_for(
        "the live stream",
        "return document.getElementById('conn-state').textContent === 'live'",
        Duration::from_secs(30),
    );
    let client = b.script("return document.getElementById('client').value");
    assert_eq!(client, "client-00000", "a viewer follows its own client");
    b.wait_for(
        "a first count",
        &format!("return {TOTAL} > 0"),
        Duration::from_secs(60),
    );
    let t0 = b.script(&format!("return {TOTAL}")).as_u64().unwrap();
    b.wait_for(
        "the count to grow while traffic flows",
        &format!("return {TOTAL} > {t0}"),
        Duration::from_secs(30),
    );
    let t1 = b.script(&format!("return {TOTAL}")).as_u64().unwrap();
    assert!(t1 > t0, "{t0} → {t1}");
    let bars = b.script("return [...document.querySelectorAll('rect.minute-bar')].filter(r => +r.getAttribute('height') > 0).length");
    assert!(bars.as_u64().unwrap() >= 1, "the chart has no bars");
    let rows = b.script("return document.querySelectorAll('#minutes tbody tr').length");
    assert_eq!(rows.as_u64(), Some(15));
    let mix = b.script("return document.querySelector('#status-mix tbody').textContent");
    assert!(mix.as_str().unwrap().contains("delivered"), "{mix}");

    let png = decode_base64(b.call("GET", "/screenshot", Value::Null).as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!(
        "dashboard screenshot: {} ({} bytes; counts {t0} → {t1})",
        out.display(),
        png.len()
    );
    let _ = wait_timeout(&mut generator, Duration::from_secs(120));
}
