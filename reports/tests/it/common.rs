//! Lakes with crafted or generated events, and report set-ups over them.

use std::borrow::Cow;
use std::process::{Command, Stdio};

use chrono::NaiveDate;
use notiflow_ingest::{Decoder, SchemaRegistry};
use notiflow_lake::bulk::Bulk;
use notiflow_lake::rows::Origin;
use notiflow_lake::{Lake, LakeConfig, S3Config};
use notiflow_loadgen::generator::{Generator, Kind, Shape};
use notiflow_loadgen::truth::{GroundTruth, TruthBuilder};
use notiflow_reports::{BillingRequest, EngineKind, Format, Reports, ReportsConfig};
use notiflow_schema::time::parse_rfc3339;
use notiflow_schema::{Category, Country, Event, Micros, Status};

pub const CARD: &str = r#"
version = "test-1"
currency = "USD"
[[rates]]
category = "marketing"
country = "*"
price_micros = 25000
from = "2020-01-01"
[[rates]]
category = "marketing"
country = "BR"
price_micros = 62500
from = "2020-01-01"
to = "2026-11-15"
[[rates]]
category = "marketing"
country = "BR"
price_micros = 70000
from = "2026-11-15"
[[rates]]
category = "utility"
country = "*"
price_micros = 4000
from = "2020-01-01"
[[rates]]
category = "authentication"
country = "*"
price_micros = 13500
from = "2020-01-01"
[[rates]]
category = "service"
country = "*"
price_micros = 3000
from = "2026-10-01"
[[rates]]
category = "service"
country = "BR"
price_micros = 6000
from = "2026-10-01"
[[free]]
category = "service"
to = "2026-10-01"
[[free]]
category = "utility"
pricing_type = "free_customer_service"
to = "2026-10-01"
[[free]]
pricing_type = "free_entry_point"
"#;

pub fn t(s: &str) -> Micros {
    parse_rfc3339(s).unwrap()
}

pub fn day(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

/// Where the lake and the outputs live.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Folder,
    S3,
}

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub lake_cfg: LakeConfig,
    pub cfg: ReportsConfig,
}

fn bucket(tag: &str) -> (String, String) {
    let endpoint = std::env::var("S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9000".into());
    let bucket = format!("rep-{tag}-{}", uuid_like());
    let ok = Command::new("curl")
        .args(["-sf", "-X", "PUT", &format!("{endpoint}/{bucket}")])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(
        ok,
        "cannot create bucket {bucket} at {endpoint} (is infra/up.sh running?)"
    );
    (endpoint, bucket)
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", n, std::process::id())
}

/// The configs of a lake, outputs and rate card in the folder `dir`.
pub fn folder_configs(dir: &std::path::Path) -> (LakeConfig, ReportsConfig) {
    let card = dir.join("rate-card.toml");
    std::fs::write(&card, CARD).unwrap();
    let lake_cfg = LakeConfig {
        warehouse: dir.join("warehouse").display().to_string(),
        catalog_uri: format!("sqlite://{}", dir.join("catalog.db").display()).into(),
        flush_rows: 5000,
        ..LakeConfig::default()
    };
    let cfg = ReportsConfig {
        output: dir.join("out").display().to_string(),
        rate_card: card.display().to_string(),
        ..ReportsConfig::default()
    };
    (lake_cfg, cfg)
}

impl Setup {
    pub fn new(store: Store, tag: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (mut lake_cfg, mut cfg) = folder_configs(dir.path());
        if store == Store::S3 {
            let (endpoint, bucket) = bucket(tag);
            lake_cfg.warehouse = format!("s3://{bucket}/warehouse");
            lake_cfg.s3 = S3Config {
                endpoint,
                region: "us-east-1".into(),
                access_key_id: "test".into(),
                secret_access_key: "test".into(),
                path_style: true,
            };
            cfg.output = format!("s3://{bucket}/out");
        }
        Setup { dir, lake_cfg, cfg }
    }

    pub fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    pub async fn lake(&self) -> Lake {
        Lake::open(&self.lake_cfg).await.unwrap()
    }

    pub async fn reports(&self) -> Reports {
        Reports::open(&self.cfg, &self.lake_cfg).await.unwrap()
    }

    /// Appends `events` as one snapshot; its id.
    pub async fn append(&self, events: &[Event<'_>]) -> i64 {
        self.load(&self.lake().await, events).await
    }

    /// Loads `events` into `lake` as one snapshot; its id.
    async fn load(&self, lake: &Lake, events: &[Event<'_>]) -> i64 {
        let mut bulk = Bulk::new(lake, &self.lake_cfg).await.unwrap();
        for (i, e) in events.iter().enumerate() {
            let origin = Origin {
                ingest_time: e.event_time,
                partition: 0,
                offset: i as i64,
            };
            bulk.push(e, origin).await.unwrap();
        }
        bulk.commit(lake).await.unwrap().unwrap()
    }

    /// Appends `events` to a table created as an earlier version created
    /// it (before `pricing_type`), before any version with the column opens
    /// it; its id.
    pub async fn append_to_an_old_table(&self, events: &[Event<'_>]) -> i64 {
        use notiflow_lake::rows::{partition_spec, sort_order, table_schema_before_pricing_type};
        let layout = notiflow_lake::table::Layout {
            schema: table_schema_before_pricing_type().unwrap(),
            spec: partition_spec().unwrap(),
            sort: sort_order(),
        };
        let lake = Lake::open_table(&self.lake_cfg, &self.lake_cfg.table, layout)
            .await
            .unwrap();
        self.load(&lake, events).await
    }

    /// Generates `n` records from `start`, loads the distinct valid events
    /// and returns the ground truth.
    pub async fn generate(&self, n: usize, start: Micros, rate: f64, seed: u64) -> GroundTruth {
        let shape = Shape {
            seed,
            clients: 20,
            rate,
            start,
            avro_share: 0.0,
            content_type_share: 0.0,
            duplicate_share: 0.01,
            malformed_share: 0.0,
        };
        let tz = self.cfg.timezone.parse().unwrap();
        let mut g = Generator::new(shape, Some(TruthBuilder::new(seed, tz)));
        let mut decoder = Decoder::new(SchemaRegistry::builtin());
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            let r = g.next_record();
            if r.kind != Kind::Valid {
                continue;
            }
            let view = r.view();
            decoder.prepare(std::slice::from_ref(&view)).await.unwrap();
            events.push(decoder.decode(&view).unwrap().into_owned());
        }
        self.append(&events).await;
        g.finish_truth().unwrap()
    }
}

/// A crafted event.
#[allow(clippy::too_many_arguments)]
pub fn ev(
    id: &str,
    message: &str,
    client: &str,
    status: Status,
    category: Category,
    billable: bool,
    country: &str,
    time: &str,
) -> Event<'static> {
    Event {
        event_id: Cow::Owned(id.into()),
        message_id: Cow::Owned(message.into()),
        client_id: Cow::Owned(client.into()),
        recipient: Cow::Borrowed("+5511987654321"),
        status,
        category,
        billable,
        country: Country::parse(country).unwrap(),
        template: Some(Cow::Borrowed("promo_nov")),
        event_time: t(time),
        error_code: None,
        pricing_type: None,
    }
}

pub fn billing(d: &str, engine: EngineKind) -> BillingRequest {
    BillingRequest {
        day: day(d),
        engine: Some(engine),
        formats: vec![Format::Csv, Format::Parquet],
        snapshot_id: None,
        correction: false,
    }
}

/// The CSV of a report file.
pub async fn read(r: &Reports, rel: &str) -> String {
    String::from_utf8(r.output().get(rel).await.unwrap()).unwrap()
}

pub fn now() -> Micros {
    notiflow_ingest::source::now_micros()
}

/// How many manifests (published runs) are under `dir`.
pub fn manifests(dir: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".manifest.json") {
                n += 1;
            }
        }
    }
    n
}
