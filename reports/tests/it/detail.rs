//! The detailed report: rows, order, filters, masking by permission, both
//! engines identical, and bad input.

use notiflow_reports::detail::DetailQuery;
use notiflow_reports::{DetailRequest, EngineKind, Format};
use notiflow_schema::{Category as C, Status as S};

use crate::common::*;

fn req(q: DetailQuery, engine: EngineKind) -> DetailRequest {
    DetailRequest {
        query: q,
        engine: Some(engine),
        formats: vec![Format::Csv, Format::Parquet],
        snapshot_id: None,
    }
}

fn acme_day() -> DetailQuery {
    DetailQuery {
        client: Some("acme".into()),
        from: t("2026-11-21T00:00:00Z"),
        to: t("2026-11-22T00:00:00Z"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detail_rows_are_filtered_ordered_and_masked_unless_pii() {
    let s = Setup::new(Store::Folder, "detail");
    s.append(&[
        ev(
            "e3",
            "m2",
            "acme",
            S::Read,
            C::Utility,
            true,
            "MX",
            "2026-11-21T12:00:00Z",
        ),
        ev(
            "e1",
            "m1",
            "acme",
            S::Sent,
            C::Marketing,
            true,
            "BR",
            "2026-11-21T10:00:00Z",
        ),
        ev(
            "e2",
            "m1",
            "acme",
            S::Delivered,
            C::Marketing,
            true,
            "BR",
            "2026-11-21T10:00:05Z",
        ),
        ev(
            "x1",
            "m9",
            "beta",
            S::Sent,
            C::Marketing,
            true,
            "BR",
            "2026-11-21T10:00:00Z",
        ),
        ev(
            "e0",
            "m0",
            "acme",
            S::Sent,
            C::Marketing,
            true,
            "BR",
            "2026-11-20T23:59:59Z",
        ),
    ])
    .await;
    let r = s.reports().await;
    let mut outs = Vec::new();
    for engine in [EngineKind::DuckDb, EngineKind::DataFusion] {
        let m = r
            .detail(&req(acme_day(), engine), now(), None)
            .await
            .unwrap();
        assert_eq!(m.rows, 3);
        let csv = read(&r, &m.files[0].path).await;
        let lines: Vec<&str> = csv.lines().collect();
        assert!(
            lines[0].starts_with("event_id,message_id,client_id,recipient,status"),
            "{}",
            lines[0]
        );
        let ids: Vec<&str> = lines[1..]
            .iter()
            .map(|l| l.split(',').next().unwrap())
            .collect();
        assert_eq!(
            ids,
            ["e1", "e2", "e3"],
            "{engine:?}: time order, other client and day left out"
        );
        assert!(
            lines[1].contains(",+5511*****4321,"),
            "masked: {}",
            lines[1]
        );
        // The message id is masked too (a wamid encodes the recipient): the
        // rule, by hand: `m_` + the first 12 bytes of sha256("notiflow
        // message_id v1\0" ‖ secret length as u64 BE ‖ secret ‖ id), in hex;
        // the secret is empty here.
        let want = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(b"notiflow message_id v1\0");
            h.update([0u8; 8]);
            h.update(b"m1");
            format!("m_{}", hex::encode(&h.finalize()[..12]))
        };
        assert!(
            lines[1].starts_with(&format!("e1,{want},acme,")),
            "pseudonymised: {}",
            lines[1]
        );
        assert!(
            !csv.contains(",m1,"),
            "a masked export carries a message id"
        );
        assert!(
            lines[1].contains("2026-11-21T10:00:00.000000+00:00"),
            "{}",
            lines[1]
        );
        outs.push((csv, m.files[1].sha256.clone()));
        // Filters.
        let q = DetailQuery {
            statuses: vec![S::Delivered, S::Read],
            countries: vec![notiflow_schema::Country::parse("MX").unwrap()],
            ..acme_day()
        };
        let m = r.detail(&req(q, engine), now(), None).await.unwrap();
        assert_eq!(m.rows, 1, "{engine:?}");
        // pii.
        let q = DetailQuery {
            pii: true,
            ..acme_day()
        };
        let m = r.detail(&req(q, engine), now(), None).await.unwrap();
        let unmasked = read(&r, &m.files[0].path).await;
        assert!(unmasked.contains(",+5511987654321,"));
        assert!(unmasked.contains("e1,m1,acme,"), "pii keeps the message id");
        // All clients (admins).
        let q = DetailQuery {
            client: None,
            ..acme_day()
        };
        assert_eq!(
            r.detail(&req(q, engine), now(), None).await.unwrap().rows,
            4
        );
    }
    assert_eq!(
        outs[0], outs[1],
        "DuckDB and DataFusion wrote different bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_detail_input_is_refused_with_a_clear_error() {
    let s = Setup::new(Store::Folder, "detail-bad");
    s.append(&[ev(
        "e1",
        "m1",
        "acme",
        S::Sent,
        C::Marketing,
        true,
        "BR",
        "2026-11-21T10:00:00Z",
    )])
    .await;
    let r = s.reports().await;
    for engine in [EngineKind::DuckDb, EngineKind::DataFusion] {
        let err = |q: DetailQuery| {
            let r = &r;
            async move { r.detail(&req(q, engine), now(), None).await.unwrap_err() }
        };
        let e = err(DetailQuery {
            client: Some("nobody".into()),
            ..acme_day()
        })
        .await;
        assert!(
            e.is_input() && e.to_string().contains("unknown client 'nobody'"),
            "{e}"
        );
        let e = err(DetailQuery {
            to: t("2026-11-21T00:00:00Z"),
            ..acme_day()
        })
        .await;
        assert!(e.is_input() && e.to_string().contains("empty range"), "{e}");
        let e = err(DetailQuery {
            from: now() + 3_600_000_000,
            to: now() + 7_200_000_000,
            ..acme_day()
        })
        .await;
        assert!(e.is_input() && e.to_string().contains("future"), "{e}");
        // A known client with nothing in the range is an empty report, not an error.
        let q = DetailQuery {
            from: t("2026-11-01T00:00:00Z"),
            to: t("2026-11-02T00:00:00Z"),
            ..acme_day()
        };
        let m = r.detail(&req(q, engine), now(), None).await.unwrap();
        assert_eq!(m.rows, 0);
        assert_eq!(
            read(&r, &m.files[0].path).await.lines().count(),
            1,
            "header only"
        );
    }
}
