//! The daily billing report: ground truth × rate card, both engines, the
//! rules on crafted events, reproducibility, S3.

use std::collections::BTreeMap;

use notiflow_reports::detail::DetailQuery;
use notiflow_reports::ratecard::RateCard;
use notiflow_reports::{DetailRequest, DuckS3Input, EngineKind, Format, Manifest};
use notiflow_schema::{Category as C, Status as S};

use crate::common::*;

/// `client,category,country → (messages, unit, amount)` of a billing CSV's
/// item lines, and `client → (messages, amount)` of its totals.
#[allow(clippy::type_complexity)]
fn parse(
    csv: &str,
) -> (
    BTreeMap<(String, String, String), (u64, i64, i64)>,
    BTreeMap<String, (u64, i64)>,
) {
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "billing_day,client_id,line,category,country,billable_messages,unit_price_micros,amount_micros,currency"
    );
    let (mut items, mut totals) = (BTreeMap::new(), BTreeMap::new());
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        if f[2] == "item" {
            items.insert(
                (f[1].to_string(), f[3].to_string(), f[4].to_string()),
                (
                    f[5].parse().unwrap(),
                    f[6].parse().unwrap(),
                    f[7].parse().unwrap(),
                ),
            );
        } else {
            assert_eq!(f[2], "total");
            totals.insert(
                f[1].to_string(),
                (f[5].parse().unwrap(), f[7].parse().unwrap()),
            );
        }
    }
    (items, totals)
}

fn sha(m: &Manifest, ext: &str) -> String {
    m.files
        .iter()
        .find(|f| f.path.ends_with(ext))
        .unwrap()
        .sha256
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_equals_the_ground_truth_times_the_rate_card_with_both_engines() {
    let s = Setup::new(Store::Folder, "truth");
    // 02:00 UTC on the 20th: the generated traffic spans the São Paulo
    // midnight (03:00 UTC) and messages get their reads hours later.
    let truth = s.generate(30_000, t("2026-11-20T02:00:00Z"), 5.0, 7).await;
    let r = s.reports().await;
    let card = RateCard::parse(CARD).unwrap();
    let mut days: Vec<String> = truth
        .billable
        .iter()
        .map(|b| b.billing_day.clone())
        .collect();
    days.sort();
    days.dedup();
    assert!(
        days.len() >= 2,
        "the load should span billing days: {days:?}"
    );
    let mut billed = 0u64;
    for d in &days {
        let duck = r
            .billing(&billing(d, EngineKind::DuckDb), now())
            .await
            .unwrap();
        let duck_csv = read(&r, &duck.files[0].path).await;
        let fusion = r
            .billing(&billing(d, EngineKind::DataFusion), now())
            .await
            .unwrap();
        let fusion_csv = read(&r, &fusion.files[0].path).await;
        assert_eq!(duck_csv, fusion_csv, "engines disagree on {d}");
        assert_eq!(sha(&duck, ".csv"), sha(&fusion, ".csv"));
        assert_eq!(
            sha(&duck, ".parquet"),
            sha(&fusion, ".parquet"),
            "Parquet bytes differ on {d}"
        );
        let (items, totals) = parse(&duck_csv);
        let mut want = BTreeMap::new();
        let mut want_totals: BTreeMap<String, (u64, i64)> = BTreeMap::new();
        for b in truth.billable.iter().filter(|b| &b.billing_day == d) {
            let unit = card.price(b.category.as_str(), &b.country, day(d)).unwrap();
            let amount = unit * b.messages as i64;
            want.insert(
                (
                    b.client_id.clone(),
                    b.category.as_str().to_string(),
                    b.country.clone(),
                ),
                (b.messages, unit, amount),
            );
            let e = want_totals.entry(b.client_id.clone()).or_default();
            e.0 += b.messages;
            e.1 += amount;
            billed += b.messages;
        }
        assert_eq!(items, want, "billing of {d}");
        assert_eq!(totals, want_totals, "totals of {d}");
        assert_eq!(duck.rate_card_version.as_deref(), Some("test-1"));
    }
    assert!(
        billed > 1000,
        "too little billed to mean anything: {billed}"
    );
}

/// Events of four messages around the São Paulo midnight of the 21st→22nd
/// (03:00 UTC on the 22nd).
fn crafted() -> Vec<notiflow_schema::Event<'static>> {
    vec![
        // m1: delivered on the 21st (local), delivered again and read on the 22nd: billed once, on the 21st.
        ev(
            "e1",
            "m1",
            "acme",
            S::Sent,
            C::Marketing,
            true,
            "BR",
            "2026-11-21T12:00:00Z",
        ),
        ev(
            "e2",
            "m1",
            "acme",
            S::Delivered,
            C::Marketing,
            true,
            "BR",
            "2026-11-21T12:00:05Z",
        ),
        ev(
            "e3",
            "m1",
            "acme",
            S::Delivered,
            C::Marketing,
            true,
            "BR",
            "2026-11-22T10:00:00Z",
        ),
        ev(
            "e4",
            "m1",
            "acme",
            S::Read,
            C::Marketing,
            true,
            "BR",
            "2026-11-22T11:00:00Z",
        ),
        // m2: read without delivered, at 02:30 UTC on the 22nd = 23:30 on the 21st in São Paulo.
        ev(
            "e5",
            "m2",
            "acme",
            S::Read,
            C::Marketing,
            true,
            "MX",
            "2026-11-22T02:30:00Z",
        ),
        // m3: service is free; m4: billable = false is free.
        ev(
            "e6",
            "m3",
            "acme",
            S::Delivered,
            C::Service,
            false,
            "BR",
            "2026-11-21T15:00:00Z",
        ),
        ev(
            "e7",
            "m4",
            "acme",
            S::Delivered,
            C::Utility,
            false,
            "BR",
            "2026-11-21T15:00:00Z",
        ),
        // m5: another client, delivered at 03:00 UTC on the 22nd: the 22nd.
        ev(
            "e8",
            "m5",
            "beta",
            S::Delivered,
            C::Utility,
            true,
            "AR",
            "2026-11-22T03:00:00Z",
        ),
        // m6: failed: never billed.
        ev(
            "e9",
            "m6",
            "beta",
            S::Failed,
            C::Utility,
            true,
            "AR",
            "2026-11-21T13:00:00Z",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_billing_rules_hold_on_crafted_events() {
    let s = Setup::new(Store::Folder, "rules");
    s.append(&crafted()).await;
    let r = s.reports().await;
    for engine in [EngineKind::DuckDb, EngineKind::DataFusion] {
        let m = r
            .billing(&billing("2026-11-21", engine), now())
            .await
            .unwrap();
        let (items, totals) = parse(&read(&r, &m.files[0].path).await);
        let k = |c: &str, cat: &str, co: &str| (c.to_string(), cat.to_string(), co.to_string());
        // m1 at the BR rate of the 21st (70,000 since the 15th), m2 at the `*` rate.
        let want = BTreeMap::from([
            (k("acme", "marketing", "BR"), (1, 70_000, 70_000)),
            (k("acme", "marketing", "MX"), (1, 25_000, 25_000)),
        ]);
        assert_eq!(items, want, "{engine:?}");
        assert_eq!(totals, BTreeMap::from([("acme".to_string(), (2, 95_000))]));
        // The 22nd bills m5 only: m1's later delivered/read are not billed again.
        let m = r
            .billing(&billing("2026-11-22", engine), now())
            .await
            .unwrap();
        let (items, _) = parse(&read(&r, &m.files[0].path).await);
        assert_eq!(
            items,
            BTreeMap::from([(k("beta", "utility", "AR"), (1, 4_000, 4_000))]),
            "{engine:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_change_mid_month_prices_each_day_at_its_rate() {
    let s = Setup::new(Store::Folder, "mid");
    s.append(&[
        ev(
            "a",
            "m1",
            "acme",
            S::Delivered,
            C::Marketing,
            true,
            "BR",
            "2026-11-14T12:00:00Z",
        ),
        ev(
            "b",
            "m2",
            "acme",
            S::Delivered,
            C::Marketing,
            true,
            "BR",
            "2026-11-15T12:00:00Z",
        ),
    ])
    .await;
    let r = s.reports().await;
    let m = r
        .billing(&billing("2026-11-14", EngineKind::DuckDb), now())
        .await
        .unwrap();
    let (_, totals) = parse(&read(&r, &m.files[0].path).await);
    assert_eq!(totals["acme"], (1, 62_500));
    let m = r
        .billing(&billing("2026-11-15", EngineKind::DuckDb), now())
        .await
        .unwrap();
    let (_, totals) = parse(&read(&r, &m.files[0].path).await);
    assert_eq!(totals["acme"], (1, 70_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_billing_input_is_refused_with_a_clear_error() {
    let mut s = Setup::new(Store::Folder, "bad");
    s.append(&[ev(
        "a",
        "m1",
        "acme",
        S::Delivered,
        C::Marketing,
        true,
        "BR",
        "2026-11-21T12:00:00Z",
    )])
    .await;
    let r = s.reports().await;
    // The billing day has not ended.
    let today = chrono::Utc::now()
        .date_naive()
        .succ_opt()
        .unwrap()
        .to_string();
    let e = r
        .billing(&billing(&today, EngineKind::DuckDb), now())
        .await
        .unwrap_err();
    assert!(
        e.is_input() && e.to_string().contains("has not ended"),
        "{e}"
    );
    // An unknown snapshot.
    let mut req = billing("2026-11-21", EngineKind::DuckDb);
    req.snapshot_id = Some(42);
    let e = r.billing(&req, now()).await.unwrap_err();
    assert!(e.is_input() && e.to_string().contains("snapshot 42"), "{e}");
    // A missing price is an error, never a zero.
    std::fs::write(
        s.path("rate-card.toml"),
        "version = \"v\"\ncurrency = \"USD\"\n[[rates]]\ncategory = \"utility\"\ncountry = \"*\"\nprice_micros = 1\nfrom = \"2020-01-01\"\n",
    )
    .unwrap();
    let r = s.reports().await;
    let e = r
        .billing(&billing("2026-11-21", EngineKind::DuckDb), now())
        .await
        .unwrap_err();
    assert!(
        e.is_input() && e.to_string().contains("no price for marketing × BR"),
        "{e}"
    );
    // A malformed rate card stops start-up, naming the field.
    std::fs::write(s.path("rate-card.toml"), CARD.replace("25000", "\"cheap\"")).unwrap();
    let e = open_err(&s).await;
    assert!(e.contains("price_micros"), "{e}");
    s.cfg.timezone = "Nowhere/City".into();
    let e = open_err(&s).await;
    assert!(e.contains("reports.timezone"), "{e}");
}

async fn open_err(s: &Setup) -> String {
    match notiflow_reports::Reports::open(&s.cfg, &s.lake_cfg).await {
        Ok(_) => panic!("opened"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_on_the_same_snapshot_gives_the_same_bytes() {
    let s = Setup::new(Store::Folder, "rerun");
    let first = s.append(&crafted()).await;
    let r = s.reports().await;
    let a = r
        .billing(&billing("2026-11-21", EngineKind::DuckDb), now())
        .await
        .unwrap();
    let bytes_a = r.output().get(&a.files[1].path).await.unwrap();
    // Late events for the day land in a new snapshot.
    s.append(&[ev(
        "late",
        "m9",
        "acme",
        S::Delivered,
        C::Utility,
        true,
        "BR",
        "2026-11-21T20:00:00Z",
    )])
    .await;
    let b = r
        .billing(&billing("2026-11-21", EngineKind::DuckDb), now())
        .await
        .unwrap();
    assert_ne!(
        sha(&a, ".csv"),
        sha(&b, ".csv"),
        "the late event must change the report"
    );
    let mut req = billing("2026-11-21", EngineKind::DuckDb);
    req.snapshot_id = a.lake_snapshot_id;
    assert_eq!(a.lake_snapshot_id, Some(first));
    let c = r.billing(&req, now()).await.unwrap();
    assert_eq!(a, c, "manifest of the rerun");
    assert_eq!(bytes_a, r.output().get(&c.files[1].path).await.unwrap());
}

/// Billing and detail from a lake on S3: DataFusion, and DuckDB with both
/// ways of reading S3 (copied files, the scan's Arrow batches) give the
/// same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_engines_report_from_a_lake_on_s3() {
    let mut s = Setup::new(Store::S3, "s3");
    s.append(&crafted()).await;
    let mut runs = Vec::new();
    for (engine, input) in [
        (EngineKind::DuckDb, DuckS3Input::Files),
        (EngineKind::DuckDb, DuckS3Input::Arrow),
        (EngineKind::DataFusion, DuckS3Input::Files),
    ] {
        s.cfg.duckdb_s3_input = input;
        let r = s.reports().await;
        let bill = r
            .billing(&billing("2026-11-21", engine), now())
            .await
            .unwrap();
        let (_, totals) = parse(&read(&r, &bill.files[0].path).await);
        assert_eq!(totals["acme"], (2, 95_000), "{engine:?} {input:?}");
        assert!(r.output().url(&bill.files[0].path).starts_with("s3://"));
        let all_day = DetailQuery {
            client: None,
            from: t("2026-11-20T00:00:00Z"),
            to: t("2026-11-23T00:00:00Z"),
            pii: true,
            ..Default::default()
        };
        let detail = r
            .detail(
                &DetailRequest {
                    query: all_day,
                    engine: Some(engine),
                    formats: vec![Format::Csv],
                    snapshot_id: None,
                },
                now(),
                None,
            )
            .await
            .unwrap();
        assert!(detail.rows > 0);
        runs.push((engine, input, bill.files, detail.files));
    }
    for (engine, input, bill, detail) in &runs[1..] {
        assert_eq!(bill, &runs[0].2, "billing of {engine:?} {input:?}");
        assert_eq!(detail, &runs[0].3, "detail of {engine:?} {input:?}");
    }
}
