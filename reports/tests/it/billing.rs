//! The daily billing report: ground truth × rate card, both engines, the
//! rules on crafted events, reproducibility, S3.

use std::collections::BTreeMap;

use notiflow_reports::billed::BilledMessage;
use notiflow_reports::detail::DetailQuery;
use notiflow_reports::output::FileEntry;
use notiflow_reports::ratecard::RateCard;
use notiflow_reports::{DetailRequest, DuckS3Input, EngineKind, Format, Manifest};
use notiflow_schema::{Category as C, Status as S};
use sha2::Digest;

use crate::common::*;

/// `client,category,country → (messages, unit, amount)` of a billing CSV's
/// item lines, and `client → (messages, amount)` of its totals.
#[allow(clippy::type_complexity)]
fn parse(
    csv: &str,
) -> (
    BTreeMap<(String, String, String), (i64, i64, i64)>,
    BTreeMap<String, (i64, i64)>,
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
        } else if f[2] == "late" {
            continue; // see `parse_late`
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

/// `day,client,category,country → (messages, unit, amount)` of a billing
/// CSV's late lines.
#[allow(clippy::type_complexity)]
fn parse_late(csv: &str) -> BTreeMap<(String, String, String, String), (i64, i64, i64)> {
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f[2] == "late")
        .map(|f| {
            (
                (
                    f[0].to_string(),
                    f[1].to_string(),
                    f[3].to_string(),
                    f[4].to_string(),
                ),
                (
                    f[5].parse().unwrap(),
                    f[6].parse().unwrap(),
                    f[7].parse().unwrap(),
                ),
            )
        })
        .collect()
}

/// What a report's files hold (format, rows, bytes, sha256), without
/// their paths: every run writes under a folder of its own.
fn contents(files: &[FileEntry]) -> Vec<(Format, u64, u64, String)> {
    files
        .iter()
        .map(|f| (f.format, f.rows, f.bytes, f.sha256.clone()))
        .collect()
}

/// Reads every file of `m` back and checks it against the manifest's sha256.
async fn assert_intact(r: &notiflow_reports::Reports, m: &Manifest) {
    for f in &m.files {
        let bytes = r.output().get(&f.path).await.unwrap();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            f.sha256,
            "{} no longer matches its manifest",
            f.path
        );
    }
    let stem = m.files[0].path.rsplit_once('.').unwrap().0;
    let stored: Manifest = serde_json::from_slice(
        &r.output()
            .get(&format!("{stem}.manifest.json"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(&stored, m);
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
    let mut truth = s.generate(30_000, t("2026-11-20T02:00:00Z"), 5.0, 7).await;
    // And across Meta's change (SPEC §5): São Paulo's 30 September into
    // 1 October, where service messages start being charged (the truth
    // writes that rule out by hand; the engines take it from the card).
    let around = s.generate(30_000, t("2026-10-01T02:00:00Z"), 5.0, 8).await;
    let service_on = |d: &str| {
        around
            .billable
            .iter()
            .filter(|b| b.category == C::Service && b.billing_day == d)
            .map(|b| b.messages)
            .sum::<u64>()
    };
    assert_eq!(
        service_on("2026-09-30"),
        0,
        "service is free before October"
    );
    assert!(
        service_on("2026-10-01") > 0,
        "service is charged from October"
    );
    assert!(
        around
            .billable
            .iter()
            .any(|b| b.billing_day == "2026-09-30"),
        "the load should bill other categories on the 30th"
    );
    truth.billable.extend(around.billable);
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
        let mut want_totals: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for b in truth.billable.iter().filter(|b| &b.billing_day == d) {
            let unit = card.price(b.category.as_str(), &b.country, day(d)).unwrap();
            let amount = unit * b.messages as i64;
            want.insert(
                (
                    b.client_id.clone(),
                    b.category.as_str().to_string(),
                    b.country.clone(),
                ),
                (b.messages as i64, unit, amount),
            );
            let e = want_totals.entry(b.client_id.clone()).or_default();
            e.0 += b.messages as i64;
            e.1 += amount;
            billed += b.messages;
        }
        assert_eq!(items, want, "billing of {d}");
        assert_eq!(totals, want_totals, "totals of {d}");
        assert_eq!(duck.rate_card_version.as_deref(), Some("test-1"));
        // The card's bytes, pinned: sha256 of CARD, computed here.
        let digest = hex::encode(sha2::Sha256::digest(CARD.as_bytes()));
        assert_eq!(duck.rate_card_sha256.as_deref(), Some(digest.as_str()));
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
        // m3 and m4: billable = false is free (m3's service is charged in
        // November, but not when the platform says it is not billable).
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

/// One invoice per day (issue 31): a re-run of a billed day after late
/// events reached the lake published a second, equally valid invoice for
/// the day (the README's backfill runbook even said to do so), and
/// invoicing both bills the day's messages twice. An issued day is only
/// ever reproduced: the same snapshot and card give the same bytes on
/// either engine and issue nothing; any other run is refused with the
/// reason and publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issued_day_is_only_ever_reproduced() {
    let s = Setup::new(Store::Folder, "rerun");
    let first = s.append(&crafted()).await;
    let r = s.reports().await;
    let a = r
        .billing(&billing("2026-11-21", EngineKind::DuckDb), now())
        .await
        .unwrap();
    assert_eq!(a.lake_snapshot_id, Some(first));
    let bytes_a = r.output().get(&a.files[1].path).await.unwrap();
    let manifests = || manifests(s.dir.path());
    assert_eq!(manifests(), 1);
    // Late events for the day land in a new snapshot: the re-run that
    // would bill them as a second invoice of the day is refused.
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
    for engine in [EngineKind::DuckDb, EngineKind::DataFusion] {
        let e = r
            .billing(&billing("2026-11-21", engine), now())
            .await
            .unwrap_err();
        assert!(e.is_issued(), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("2026-11-21 was issued by run")
                && msg.contains(&format!("--snapshot {first}")),
            "{msg}"
        );
    }
    assert_eq!(manifests(), 1, "a refused run published something");
    // Reproducing it: the same bytes, on either engine, and the manifest
    // says what the first one said.
    for engine in [EngineKind::DuckDb, EngineKind::DataFusion] {
        let mut req = billing("2026-11-21", engine);
        req.snapshot_id = a.lake_snapshot_id;
        let c = r.billing(&req, now()).await.unwrap();
        assert_eq!(contents(&a.files), contents(&c.files), "files of the rerun");
        assert_eq!(
            (&a.params, a.lake_snapshot_id, &a.rate_card_sha256, a.rows),
            (&c.params, c.lake_snapshot_id, &c.rate_card_sha256, c.rows),
            "manifest of the rerun"
        );
        assert_eq!(bytes_a, r.output().get(&c.files[1].path).await.unwrap());
        assert_ne!(
            a.files[0].path.rsplit_once('/').unwrap().0,
            c.files[0].path.rsplit_once('/').unwrap().0,
            "each run under its own folder"
        );
        assert_intact(&r, &a).await;
        assert_intact(&r, &c).await;
    }
    // The ledger holds the messages the invoice billed, once, named by its
    // run: neither the refused runs nor the reproductions added any.
    let run_a = a.files[0].path.rsplit('/').nth(1).unwrap().to_string();
    let t = |s: &str| notiflow_schema::time::parse_rfc3339(s).unwrap();
    let row = |m: &str, cat: &str, co: &str, e: &str, at: &str, run: &str| BilledMessage {
        client_id: "acme".into(),
        message_id: m.into(),
        billing_day: "2026-11-21".parse().unwrap(),
        category: cat.into(),
        country: co.into(),
        first_event_id: e.into(),
        first_event_time: t(at),
        run: run.into(),
    };
    assert_eq!(
        r.billed().find(|_, _| true).await.unwrap(),
        vec![
            row(
                "m1",
                "marketing",
                "BR",
                "e2",
                "2026-11-21T12:00:05Z",
                &run_a
            ),
            row(
                "m2",
                "marketing",
                "MX",
                "e5",
                "2026-11-22T02:30:00Z",
                &run_a
            ),
        ]
    );
    // Another day is its own invoice, from the current snapshot, on the
    // other engine: its messages join the ledger alike.
    let d22 = r
        .billing(&billing("2026-11-22", EngineKind::DataFusion), now())
        .await
        .unwrap();
    let run_22 = d22.files[0].path.rsplit('/').nth(1).unwrap().to_string();
    let beta = r.billed().find(|c, _| c == "beta").await.unwrap();
    assert_eq!(
        beta,
        vec![BilledMessage {
            client_id: "beta".into(),
            billing_day: "2026-11-22".parse().unwrap(),
            ..row("m5", "utility", "AR", "e8", "2026-11-22T03:00:00Z", &run_22)
        }]
    );
    let e = r
        .billing(&billing("2026-11-22", EngineKind::DuckDb), now())
        .await;
    assert!(e.is_ok(), "nothing new since: a reproduction ({e:?})");
    assert_eq!(r.billed().find(|_, _| true).await.unwrap().len(), 3);
}

/// Days issued at least `lookback_days` (7) after the first issued day
/// read the ledger for their whole look-back: late lines are billed for
/// them. The test issues the seven days before the 21st first (empty).
async fn issue_week_before(r: &notiflow_reports::Reports, engine: EngineKind) {
    for d in 14..=20 {
        r.billing(&billing(&format!("2026-11-{d}"), engine), now())
            .await
            .unwrap();
    }
}

/// Late lines (issue 31): a `delivered` that reached the lake after its
/// day was issued was billed nowhere (the next day's run looked only at
/// its own day); a message delivered on one day and read eight days later
/// was billed on both days (the look-back is seven). With the ledger, the
/// next invoice bills the late message as a late line naming its day,
/// priced at that day's rate, and a message the ledger has is never billed
/// again. Hand-priced (São Paulo days, the test card); both engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_are_billed_once_as_late_lines_of_their_day() {
    for engine in [EngineKind::DuckDb, EngineKind::DataFusion] {
        let s = Setup::new(Store::Folder, &format!("late-{}", engine.as_str()));
        s.append(&crafted()).await;
        let r = s.reports().await;
        issue_week_before(&r, engine).await;
        let r = &r;
        let csv = |m: &Manifest| {
            let f = m.files.iter().find(|f| f.path.ends_with(".csv")).unwrap();
            let path = f.path.clone();
            async move { String::from_utf8(r.output().get(&path).await.unwrap()).unwrap() }
        };
        let k = |c: &str, cat: &str, co: &str| (c.to_string(), cat.to_string(), co.to_string());
        let d21 = r
            .billing(&billing("2026-11-21", engine), now())
            .await
            .unwrap();
        assert_eq!(parse(&csv(&d21).await).1["acme"], (2, 95_000));
        // After the 21st was issued: a late `delivered` of the 21st (m9),
        // and m2 read again on the 29th (first read at 23:30 on the 21st,
        // São Paulo time: billed then, eight days before).
        s.append(&[
            ev(
                "l1",
                "m9",
                "acme",
                S::Delivered,
                C::Utility,
                true,
                "BR",
                "2026-11-21T20:00:00Z",
            ),
            ev(
                "l2",
                "m2",
                "acme",
                S::Read,
                C::Marketing,
                true,
                "MX",
                "2026-11-29T12:00:00Z",
            ),
        ])
        .await;
        let d22 = r
            .billing(&billing("2026-11-22", engine), now())
            .await
            .unwrap();
        let text = csv(&d22).await;
        let (items, totals) = parse(&text);
        assert_eq!(
            items,
            BTreeMap::from([(k("beta", "utility", "AR"), (1, 4_000, 4_000))])
        );
        assert_eq!(
            parse_late(&text),
            BTreeMap::from([(
                (
                    "2026-11-21".into(),
                    "acme".into(),
                    "utility".into(),
                    "BR".into()
                ),
                (1, 4_000, 4_000)
            )])
        );
        assert_eq!(
            totals["acme"],
            (1, 4_000),
            "the late line is on acme's total"
        );
        // The 29th bills nothing of m2 (the ledger has it from the 21st);
        // before the ledger, its look-back (22nd–28th) did not see the 21st.
        for d in 23..=29 {
            let m = r
                .billing(&billing(&format!("2026-11-{d}"), engine), now())
                .await
                .unwrap();
            let text = csv(&m).await;
            assert_eq!(
                text.lines().count(),
                1,
                "2026-11-{d} bills something: {text}"
            );
        }
        // Every message once, in the ledger, with the day it belongs to.
        let ledger = r.billed().find(|_, _| true).await.unwrap();
        let ids: Vec<(&str, String)> = ledger
            .iter()
            .map(|b| (b.message_id.as_str(), b.billing_day.to_string()))
            .collect();
        assert_eq!(
            ids,
            [
                ("m1", "2026-11-21".to_string()),
                ("m2", "2026-11-21".to_string()),
                ("m9", "2026-11-21".to_string()),
                ("m5", "2026-11-22".to_string()),
            ]
        );
        let run22 = d22.files[0].path.rsplit('/').nth(1).unwrap();
        assert_eq!(ledger[2].run, run22, "m9 billed by the 22nd's invoice");
    }
}

/// An event that reaches the lake after its day left every later
/// invoice's look-back (issue 31's open defect): before, no invoice saw
/// it, and a later billable event of its message billed the message on
/// the later day, at that event's category, country and price. Now the
/// first invoice after it arrived reads it (the rows that reached the
/// lake after the last invoice's snapshot, whatever their day): a late
/// line of its own day; the later event bills nothing. Hand-priced (São
/// Paulo days, look-back 7, the test card): the 14th to the 22nd issued
/// (the 21st's lines may be late lines: it is a week after the first
/// issued day); then m8, an acme utility `delivered` of the 21st, arrives
/// with its marketing `read` of the 30th, and so does m10 with a utility
/// `delivered` of the 15th (issued, but in the first week: no late lines,
/// a correction bills it). The 29th (look-back from the 22nd) bills m8 as
/// a late line of the 21st, utility BR 1 × 4,000, and holds m10 for the
/// 15th; the 30th bills nothing (not marketing MX 25,000 twice); the
/// 15th's correction bills m10, utility BR 1 × 4,000. Both engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_older_than_the_look_back_is_billed_on_its_own_day() {
    for engine in [EngineKind::DuckDb, EngineKind::DataFusion] {
        let s = Setup::new(Store::Folder, &format!("arrive-{}", engine.as_str()));
        s.append(&crafted()).await;
        let r = s.reports().await;
        issue_week_before(&r, engine).await;
        for d in ["2026-11-21", "2026-11-22"] {
            r.billing(&billing(d, engine), now()).await.unwrap();
        }
        s.append(&[
            ev(
                "a1",
                "m8",
                "acme",
                S::Delivered,
                C::Utility,
                true,
                "BR",
                "2026-11-21T15:00:00Z",
            ),
            ev(
                "a2",
                "m8",
                "acme",
                S::Read,
                C::Marketing,
                true,
                "MX",
                "2026-11-30T12:00:00Z",
            ),
            ev(
                "a3",
                "m10",
                "acme",
                S::Delivered,
                C::Utility,
                true,
                "BR",
                "2026-11-15T15:00:00Z",
            ),
            ev(
                "a4",
                "m10",
                "acme",
                S::Read,
                C::Marketing,
                true,
                "MX",
                "2026-11-30T13:00:00Z",
            ),
        ])
        .await;
        let csv = |d: &str, correction: bool| {
            let r = &r;
            let mut req = billing(d, engine);
            req.correction = correction;
            async move {
                let m = r.billing(&req, now()).await.unwrap();
                let f = m.files.iter().find(|f| f.path.ends_with(".csv")).unwrap();
                String::from_utf8(r.output().get(&f.path).await.unwrap()).unwrap()
            }
        };
        let d29 = csv("2026-11-29", false).await;
        assert_eq!(parse(&d29).0, BTreeMap::new(), "{d29}");
        assert_eq!(
            parse_late(&d29),
            BTreeMap::from([(
                (
                    "2026-11-21".into(),
                    "acme".into(),
                    "utility".into(),
                    "BR".into()
                ),
                (1, 4_000, 4_000)
            )]),
            "{engine:?}: {d29}"
        );
        let held = r.billed().held(|_, _| true).await.unwrap();
        assert_eq!(
            held.iter()
                .map(|h| (h.message_id.as_str(), h.billing_day.to_string()))
                .collect::<Vec<_>>(),
            [("m10", "2026-11-15".to_string())]
        );
        let d30 = csv("2026-11-30", false).await;
        assert_eq!(
            d30.lines().count(),
            1,
            "{engine:?}: the 30th bills m8 or m10: {d30}"
        );
        let d15 = csv("2026-11-15", true).await;
        assert_eq!(
            parse(&d15).0,
            BTreeMap::from([(
                ("acme".to_string(), "utility".to_string(), "BR".to_string()),
                (1, 4_000, 4_000)
            )]),
            "{engine:?}: {d15}"
        );
        let ledger = r
            .billed()
            .find(|_, m| m == "m8" || m == "m10")
            .await
            .unwrap();
        let got: Vec<(&str, String, &str)> = ledger
            .iter()
            .map(|b| {
                (
                    b.message_id.as_str(),
                    b.billing_day.to_string(),
                    b.first_event_id.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("m10", "2026-11-15".to_string(), "a3"),
                ("m8", "2026-11-21".to_string(), "a1")
            ]
        );
    }
}

/// A backfill of issued days beyond what the next invoices see is billed
/// by corrections, asked for explicitly (before: by re-running the day, a
/// second complete invoice). Hand-priced (São Paulo days, the test card):
/// the 21st was issued with acme marketing BR 1 × 70,000 and marketing MX
/// 1 × 25,000, the 22nd with beta utility AR 1 × 4,000 (m5). Then a
/// backfill: m7, an acme utility BR delivered on the 21st, and an earlier
/// `delivered` of m5 on the 21st. The 21st's correction bills m7 (+4,000);
/// m5 stays billed once, on the 22nd (the ledger has it), so the 22nd has
/// nothing to correct. A correction with nothing new is refused, so is one
/// of a day not issued; both engines alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_of_issued_days_is_billed_by_corrections_of_their_own() {
    for engine in [EngineKind::DuckDb, EngineKind::DataFusion] {
        let s = Setup::new(Store::Folder, &format!("correct-{}", engine.as_str()));
        s.append(&crafted()).await;
        let r = s.reports().await;
        let r = &r;
        let csv = |m: &Manifest| {
            let f = m.files.iter().find(|f| f.path.ends_with(".csv")).unwrap();
            let path = f.path.clone();
            async move { String::from_utf8(r.output().get(&path).await.unwrap()).unwrap() }
        };
        let correct = |d: &str| {
            let mut req = billing(d, engine);
            req.correction = true;
            req
        };
        let e = r.billing(&correct("2026-11-21"), now()).await.unwrap_err();
        assert!(
            e.is_input() && e.to_string().contains("no invoice to correct"),
            "{e}"
        );
        let d21 = r
            .billing(&billing("2026-11-21", engine), now())
            .await
            .unwrap();
        let d22 = r
            .billing(&billing("2026-11-22", engine), now())
            .await
            .unwrap();
        let k = |c: &str, cat: &str, co: &str| (c.to_string(), cat.to_string(), co.to_string());
        let (items, _) = parse(&csv(&d21).await);
        assert_eq!(
            items,
            BTreeMap::from([
                (k("acme", "marketing", "BR"), (1, 70_000, 70_000)),
                (k("acme", "marketing", "MX"), (1, 25_000, 25_000)),
            ])
        );
        let e = r.billing(&correct("2026-11-21"), now()).await.unwrap_err();
        assert!(
            e.is_input() && e.to_string().contains("nothing to correct"),
            "{e}"
        );

        s.append(&[
            ev(
                "b1",
                "m7",
                "acme",
                S::Delivered,
                C::Utility,
                true,
                "BR",
                "2026-11-21T20:00:00Z",
            ),
            ev(
                "b2",
                "m5",
                "beta",
                S::Delivered,
                C::Utility,
                true,
                "AR",
                "2026-11-21T23:00:00Z",
            ),
        ])
        .await;
        let c21 = r.billing(&correct("2026-11-21"), now()).await.unwrap();
        let e = r.billing(&correct("2026-11-22"), now()).await.unwrap_err();
        assert!(e.to_string().contains("nothing to correct"), "{e}");
        assert_eq!(c21.kind, "billing-correction");
        assert_eq!(c21.params["correction"], 1);
        assert_eq!(
            c21.params["corrects"]["lake_snapshot_id"],
            d21.lake_snapshot_id.unwrap()
        );
        assert!(
            c21.files[0]
                .path
                .contains("billing-2026-11-21-correction-1."),
            "{:?}",
            c21.files
        );
        let (items, totals) = parse(&csv(&c21).await);
        assert_eq!(
            items,
            BTreeMap::from([(k("acme", "utility", "BR"), (1, 4_000, 4_000))])
        );
        assert_eq!(totals["acme"], (1, 4_000));
        // Everything issued for the two days, summed: each message once.
        let mut sum = 0;
        for m in [&d21, &d22, &c21] {
            sum += parse(&csv(m).await).1.values().map(|t| t.1).sum::<i64>();
            assert_intact(r, m).await;
        }
        assert_eq!(sum, 70_000 + 25_000 + 4_000 + 4_000);
        assert_eq!(r.billed().find(|_, _| true).await.unwrap().len(), 4);
        // Nothing new since the correction: refused, as is a plain re-run.
        let e = r.billing(&correct("2026-11-21"), now()).await.unwrap_err();
        assert!(e.to_string().contains("nothing to correct"), "{e}");
        let e = r
            .billing(&billing("2026-11-21", engine), now())
            .await
            .unwrap_err();
        assert!(e.is_issued(), "{e}");
    }
}

/// A lake whose older files predate the `pricing_type` column (schema
/// evolution) bills as one with the column: DuckDB reads the files by
/// column name (or the scan's batches, on S3), DataFusion through the
/// Iceberg schema; a snapshot from before the column reads it as null;
/// same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_reads_files_from_before_pricing_type() {
    evolved(Store::Folder, DuckS3Input::Files).await;
    evolved(Store::S3, DuckS3Input::Arrow).await;
}

async fn evolved(store: Store, input: DuckS3Input) {
    let mut s = Setup::new(store, "evolved");
    s.cfg.duckdb_s3_input = input;
    let events = crafted();
    s.append_to_an_old_table(&events[..4]).await;
    let r = s.reports().await; // opens the lake: the column is added
    // A day of old files only: no file has the column DuckDB is asked for.
    for engine in [EngineKind::DuckDb, EngineKind::DataFusion] {
        let only_old = r
            .billing(&billing("2026-11-22", engine), now())
            .await
            .unwrap();
        assert_eq!(
            only_old.rows, 0,
            "{engine:?}: nothing billed (m1 on the 21st)"
        );
    }
    let mut rest = events[4..].to_vec();
    for e in &mut rest {
        e.pricing_type = Some(notiflow_schema::PricingType::Regular);
    }
    s.append(&rest).await;
    let duck = r
        .billing(&billing("2026-11-21", EngineKind::DuckDb), now())
        .await
        .unwrap();
    let mut req = billing("2026-11-21", EngineKind::DataFusion);
    req.snapshot_id = duck.lake_snapshot_id;
    let fusion = r.billing(&req, now()).await.unwrap();
    assert_eq!(contents(&duck.files), contents(&fusion.files));
    let csv = r.output().get(&duck.files[0].path).await.unwrap();
    let (_, totals) = parse(std::str::from_utf8(&csv).unwrap());
    assert_eq!(
        totals["acme"],
        (2, 95_000),
        "m1 (old file) and m2 (new file)"
    );
}

/// Meta's pricing since 2026-10-01 (issue 31), as card rows: utility
/// templates sent inside the customer service window were free and are
/// charged from that day; the free entry-point window stays free whatever
/// the category; an event without a pricing type is `regular`. Hand-priced
/// (São Paulo days, the test card), both engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pricing_types_follow_the_card_across_2026_10_01() {
    use notiflow_schema::PricingType as P;
    let s = Setup::new(Store::Folder, "pricing");
    let with = |mut e: notiflow_schema::Event<'static>, p: Option<P>| {
        e.pricing_type = p;
        e
    };
    let d = |id: &str, m: &str, c: C, p: Option<P>, at: &str| {
        with(ev(id, m, "acme", S::Delivered, c, true, "BR", at), p)
    };
    s.append(&[
        d(
            "u1",
            "u1",
            C::Utility,
            Some(P::FreeCustomerService),
            "2026-09-30T15:00:00Z",
        ),
        d(
            "u2",
            "u2",
            C::Utility,
            Some(P::FreeCustomerService),
            "2026-10-01T15:00:00Z",
        ),
        d("u3", "u3", C::Utility, None, "2026-09-30T15:00:00Z"),
        d(
            "e1",
            "e1",
            C::Marketing,
            Some(P::FreeEntryPoint),
            "2026-10-01T15:00:00Z",
        ),
        d(
            "e2",
            "e2",
            C::Utility,
            Some(P::FreeEntryPoint),
            "2026-09-30T15:00:00Z",
        ),
        d(
            "m1",
            "m1",
            C::Marketing,
            Some(P::Regular),
            "2026-10-01T15:00:00Z",
        ),
        d(
            "s1",
            "s1",
            C::Service,
            Some(P::FreeCustomerService),
            "2026-10-01T15:00:00Z",
        ),
        d(
            "a1",
            "a1",
            C::Authentication,
            Some(P::FreeCustomerService),
            "2026-09-30T15:00:00Z",
        ),
    ])
    .await;
    let r = s.reports().await;
    let k = |cat: &str| ("acme".to_string(), cat.to_string(), "BR".to_string());
    for engine in [EngineKind::DuckDb, EngineKind::DataFusion] {
        let sep = r
            .billing(&billing("2026-09-30", engine), now())
            .await
            .unwrap();
        let oct = r
            .billing(&billing("2026-10-01", engine), now())
            .await
            .unwrap();
        let text = |m: &Manifest| {
            let path = m.files[0].path.clone();
            let r = &r;
            async move { String::from_utf8(r.output().get(&path).await.unwrap()).unwrap() }
        };
        let (items, totals) = parse(&text(&sep).await);
        assert_eq!(
            items,
            BTreeMap::from([
                (k("authentication"), (1, 13_500, 13_500)),
                (k("utility"), (1, 4_000, 4_000)),
            ]),
            "{engine:?} 09-30: u1 (in the service window) and e2 (entry point) are free"
        );
        assert_eq!(totals["acme"], (2, 17_500));
        let (items, totals) = parse(&text(&oct).await);
        assert_eq!(
            items,
            BTreeMap::from([
                (k("marketing"), (1, 62_500, 62_500)),
                (k("service"), (1, 6_000, 6_000)),
                (k("utility"), (1, 4_000, 4_000)),
            ]),
            "{engine:?} 10-01: u2 is charged, e1 (entry point) is free"
        );
        assert_eq!(totals["acme"], (3, 72_500));
    }
    let card = RateCard::parse(CARD).unwrap();
    let day = |d: &str| d.parse().unwrap();
    assert!(card.is_free("utility", Some(P::FreeCustomerService), day("2026-09-30")));
    assert!(!card.is_free("utility", Some(P::FreeCustomerService), day("2026-10-01")));
    assert!(card.is_free("marketing", Some(P::FreeEntryPoint), day("2027-01-01")));
    assert!(!card.is_free("utility", None, day("2026-09-30")));
}

/// The snapshot a billing run read stays readable for the dispute period
/// (an Iceberg tag that the lake's expiry keeps): after maintenance expired
/// every other old snapshot and removed their files, the invoice still
/// reproduces byte for byte (it expired with the 7-day snapshot expiry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billing_snapshot_outlives_expiry_for_the_dispute_period() {
    use std::time::{Duration, SystemTime};
    let s = Setup::new(Store::Folder, "tag");
    let first = s.append(&crafted()).await;
    let r = s.reports().await;
    let a = r
        .billing(&billing("2026-11-21", EngineKind::DuckDb), now())
        .await
        .unwrap();
    assert_eq!(a.lake_snapshot_id, Some(first));
    let tag = a.lake_snapshot_tag.clone().unwrap();
    assert!(tag.starts_with("notiflow-billing-2026-11-21-"), "{tag}");
    for (i, when) in ["2026-11-21T20:00:00Z", "2026-11-21T21:00:00Z"]
        .iter()
        .enumerate()
    {
        let id = format!("late{i}");
        let msg = format!("m-late{i}");
        s.append(&[ev(
            &id,
            &msg,
            "acme",
            S::Delivered,
            C::Utility,
            true,
            "BR",
            when,
        )])
        .await;
    }
    // Ten days on, the lake's maintenance expires snapshots older than 7
    // days (all but the current one and the tagged one) and their files.
    let lake = s.lake().await;
    let later = SystemTime::now() + Duration::from_secs(10 * 86_400);
    let expired = notiflow_lake::maintenance::expire(&lake, &s.lake_cfg, later)
        .await
        .unwrap();
    assert_eq!(expired, 1, "the middle snapshot goes");
    notiflow_lake::maintenance::remove_orphans(&lake, &s.lake_cfg, later)
        .await
        .unwrap();
    let table = lake.load().await.unwrap();
    assert_eq!(
        table
            .metadata()
            .snapshot_for_ref(&tag)
            .map(|s| s.snapshot_id()),
        Some(first)
    );
    let mut req = billing("2026-11-21", EngineKind::DuckDb);
    req.snapshot_id = Some(first);
    let c = r.billing(&req, now()).await.unwrap();
    assert_eq!(contents(&a.files), contents(&c.files));
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
        assert_eq!(
            contents(bill),
            contents(&runs[0].2),
            "billing of {engine:?} {input:?}"
        );
        assert_eq!(
            contents(detail),
            contents(&runs[0].3),
            "detail of {engine:?} {input:?}"
        );
    }
}

/// Messages whose events change category or country (Meta re-categorises;
/// every status carries the category), ties on `event_time`, a `service`
/// first event, and one message id used by two clients. The rule (SPEC §5):
/// a message is billed once, on the day and under the category and country
/// of its first billable event (a `delivered`/`read` with `billable` whose
/// category the card charges that day; earliest `event_time`, ties by
/// `event_id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_billed_once_under_its_first_billable_event() {
    let s = Setup::new(Store::Folder, "drift");
    s.append(&[
        // m10: delivered as utility to BR, read as marketing to MX the same
        // day: one utility × BR message.
        ev(
            "a1",
            "m10",
            "acme",
            S::Delivered,
            C::Utility,
            true,
            "BR",
            "2026-11-21T12:00:00Z",
        ),
        ev(
            "a2",
            "m10",
            "acme",
            S::Read,
            C::Marketing,
            true,
            "MX",
            "2026-11-21T13:00:00Z",
        ),
        // m11: two billable events at the same instant: `k1` < `k2` decides,
        // authentication × AR.
        ev(
            "k2",
            "m11",
            "acme",
            S::Delivered,
            C::Marketing,
            true,
            "BR",
            "2026-11-21T14:00:00Z",
        ),
        ev(
            "k1",
            "m11",
            "acme",
            S::Read,
            C::Authentication,
            true,
            "AR",
            "2026-11-21T14:00:00Z",
        ),
        // m12: delivered as service (charged since 2026-10-01), read as
        // marketing: the delivered is its first billable event, service × BR.
        ev(
            "s1",
            "m12",
            "acme",
            S::Delivered,
            C::Service,
            true,
            "BR",
            "2026-11-21T09:00:00Z",
        ),
        ev(
            "s2",
            "m12",
            "acme",
            S::Read,
            C::Marketing,
            true,
            "BR",
            "2026-11-21T10:00:00Z",
        ),
        // m13: a non-billable delivered, then a billable read: utility × AR.
        ev(
            "n1",
            "m13",
            "acme",
            S::Delivered,
            C::Marketing,
            false,
            "BR",
            "2026-11-21T08:00:00Z",
        ),
        ev(
            "n2",
            "m13",
            "acme",
            S::Read,
            C::Utility,
            true,
            "AR",
            "2026-11-21T09:00:00Z",
        ),
        // m14: delivered as marketing to BR on the 20th, read as utility to
        // MX on the 21st: billed on the 20th only.
        ev(
            "d1",
            "m14",
            "acme",
            S::Delivered,
            C::Marketing,
            true,
            "BR",
            "2026-11-20T12:00:00Z",
        ),
        ev(
            "d2",
            "m14",
            "acme",
            S::Read,
            C::Utility,
            true,
            "MX",
            "2026-11-21T12:00:00Z",
        ),
        // beta reuses the id m10: its own message, marketing × MX.
        ev(
            "b1",
            "m10",
            "beta",
            S::Delivered,
            C::Marketing,
            true,
            "MX",
            "2026-11-21T15:00:00Z",
        ),
        ev(
            "b2",
            "m10",
            "beta",
            S::Read,
            C::Utility,
            true,
            "BR",
            "2026-11-21T16:00:00Z",
        ),
    ])
    .await;
    let r = s.reports().await;
    let k = |c: &str, cat: &str, co: &str| (c.to_string(), cat.to_string(), co.to_string());
    // The card's prices written out: utility * 4,000; authentication *
    // 13,500; marketing BR 70,000 (from the 15th); marketing * 25,000;
    // service BR 6,000 (from 2026-10-01).
    let want_21 = BTreeMap::from([
        (k("acme", "authentication", "AR"), (1, 13_500, 13_500)),
        (k("acme", "service", "BR"), (1, 6_000, 6_000)),
        (k("acme", "utility", "AR"), (1, 4_000, 4_000)),
        (k("acme", "utility", "BR"), (1, 4_000, 4_000)),
        (k("beta", "marketing", "MX"), (1, 25_000, 25_000)),
    ]);
    let want_totals_21 = BTreeMap::from([
        ("acme".to_string(), (4, 27_500)),
        ("beta".to_string(), (1, 25_000)),
    ]);
    let want_20 = BTreeMap::from([(k("acme", "marketing", "BR"), (1, 70_000, 70_000))]);
    let mut files = Vec::new();
    for engine in [EngineKind::DuckDb, EngineKind::DataFusion] {
        let m = r
            .billing(&billing("2026-11-21", engine), now())
            .await
            .unwrap();
        let csv = read(&r, &m.files[0].path).await;
        let (items, totals) = parse(&csv);
        assert_eq!(items, want_21, "{engine:?}");
        assert_eq!(totals, want_totals_21, "{engine:?}");
        files.push(csv);
        let m = r
            .billing(&billing("2026-11-20", engine), now())
            .await
            .unwrap();
        let (items, _) = parse(&read(&r, &m.files[0].path).await);
        assert_eq!(items, want_20, "{engine:?}");
    }
    assert_eq!(files[0], files[1], "the engines' files differ");
}

/// Meta charges `service` messages since 2026-10-01 (SPEC §5): a card row,
/// not code. Around the change, in São Paulo's billing days, on both
/// engines, priced by hand from the test card.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_is_free_until_2026_10_01_and_charged_from_that_day() {
    let s = Setup::new(Store::Folder, "svc");
    s.append(&[
        // sa: a free service delivered on the 30th, then a marketing read:
        // the read is its first billable event, marketing × BR.
        ev(
            "sa1",
            "sa",
            "acme",
            S::Delivered,
            C::Service,
            true,
            "BR",
            "2026-09-30T12:00:00Z",
        ),
        ev(
            "sa2",
            "sa",
            "acme",
            S::Read,
            C::Marketing,
            true,
            "BR",
            "2026-09-30T13:00:00Z",
        ),
        // sb: 02:30 UTC on the 1st is 23:30 on the 30th in São Paulo: free.
        ev(
            "sb1",
            "sb",
            "acme",
            S::Delivered,
            C::Service,
            true,
            "BR",
            "2026-10-01T02:30:00Z",
        ),
        // sc: 03:00 UTC on the 1st is its first minute there: charged.
        ev(
            "sc1",
            "sc",
            "acme",
            S::Delivered,
            C::Service,
            true,
            "BR",
            "2026-10-01T03:00:00Z",
        ),
        // sd: a service read to MX on the 1st: the `*` service rate.
        ev(
            "sd1",
            "sd",
            "acme",
            S::Read,
            C::Service,
            true,
            "MX",
            "2026-10-01T12:00:00Z",
        ),
    ])
    .await;
    let r = s.reports().await;
    let k = |c: &str, cat: &str, co: &str| (c.to_string(), cat.to_string(), co.to_string());
    // marketing BR 62,500 before the 15th of November; service BR 6,000
    // and service * 3,000 from 2026-10-01.
    let want_30 = BTreeMap::from([(k("acme", "marketing", "BR"), (1, 62_500, 62_500))]);
    let want_1 = BTreeMap::from([
        (k("acme", "service", "BR"), (1, 6_000, 6_000)),
        (k("acme", "service", "MX"), (1, 3_000, 3_000)),
    ]);
    for engine in [EngineKind::DuckDb, EngineKind::DataFusion] {
        let m = r
            .billing(&billing("2026-09-30", engine), now())
            .await
            .unwrap();
        let (items, totals) = parse(&read(&r, &m.files[0].path).await);
        assert_eq!(items, want_30, "{engine:?}");
        assert_eq!(totals, BTreeMap::from([("acme".to_string(), (1, 62_500))]));
        let m = r
            .billing(&billing("2026-10-01", engine), now())
            .await
            .unwrap();
        let (items, totals) = parse(&read(&r, &m.files[0].path).await);
        assert_eq!(items, want_1, "{engine:?}");
        assert_eq!(totals, BTreeMap::from([("acme".to_string(), (2, 9_000))]));
    }
}

/// A DuckDB billing day and detail export of one snapshot: what their files
/// hold. The test below runs it here and in child processes.
async fn tz_reports(
    lake_cfg: &notiflow_lake::LakeConfig,
    cfg: &notiflow_reports::ReportsConfig,
    snapshot: i64,
) -> Vec<(Format, u64, u64, String)> {
    let r = notiflow_reports::Reports::open(cfg, lake_cfg)
        .await
        .unwrap();
    let mut bill = billing("2026-11-21", EngineKind::DuckDb);
    bill.snapshot_id = Some(snapshot);
    let mut out = contents(&r.billing(&bill, now()).await.unwrap().files);
    let detail = DetailRequest {
        query: DetailQuery {
            client: Some("acme".into()),
            from: t("2026-11-20T00:00:00Z"),
            to: t("2026-11-23T00:00:00Z"),
            ..Default::default()
        },
        engine: Some(EngineKind::DuckDb),
        formats: vec![Format::Csv, Format::Parquet],
        snapshot_id: Some(snapshot),
    };
    out.extend(contents(
        &r.detail(&detail, now(), None).await.unwrap().files,
    ));
    out
}

/// DuckDB's official library has ICU built in, so its TIMESTAMPTZ values
/// follow the process's time zone unless the session pins one (issue 33;
/// every connection sets `TimeZone = 'UTC'`). A billing day and a detail
/// export run in a child process under `TZ=America/New_York` (and one under
/// `TZ=Asia/Kolkata`) must give the same bytes as here (UTC). Today's
/// queries compare instants only, so they pass without the pin too; this
/// keeps any later day bucketing honest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_reports_are_the_same_bytes_whatever_the_process_time_zone() {
    if let Ok(dir) = std::env::var("NOTIFLOW_TZ_CHILD") {
        // The zone reached this process (not a child run under UTC again).
        let offset = chrono::Local::now().offset().local_minus_utc();
        assert_ne!(offset, 0, "TZ={:?} did not apply", std::env::var("TZ"));
        let (lake_cfg, cfg) = folder_configs(std::path::Path::new(&dir));
        let snapshot: i64 = std::env::var("NOTIFLOW_TZ_SNAPSHOT")
            .unwrap()
            .parse()
            .unwrap();
        let files = tz_reports(&lake_cfg, &cfg, snapshot).await;
        let out = std::env::var("NOTIFLOW_TZ_OUT").unwrap();
        std::fs::write(out, serde_json::to_vec(&files).unwrap()).unwrap();
        return;
    }
    let s = Setup::new(Store::Folder, "tz");
    let snapshot = s.append(&crafted()).await;
    let here = tz_reports(&s.lake_cfg, &s.cfg, snapshot).await;
    assert_eq!(here.len(), 4, "{here:?}");
    for tz in ["America/New_York", "Asia/Kolkata"] {
        let file = s.path(&format!("tz-{}.json", tz.replace('/', "-")));
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "billing::duckdb_reports_are_the_same_bytes_whatever_the_process_time_zone",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TZ", tz)
            .env("NOTIFLOW_TZ_CHILD", s.dir.path())
            .env("NOTIFLOW_TZ_SNAPSHOT", snapshot.to_string())
            .env("NOTIFLOW_TZ_OUT", &file)
            .output()
            .unwrap();
        assert!(
            out.status.success() && file.exists(),
            "child under TZ={tz} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let there: Vec<(Format, u64, u64, String)> =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(here, there, "reports under TZ={tz} differ from UTC's");
    }
}
