//! Hot-path throughput: decode + validate of a realistic record mix (JSON and
//! Avro, one core), and the generator's own encode rate.
//!
//! `cargo bench -p notiflow-loadgen --bench codec`; figures in BENCHMARKS.md.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use notiflow_ingest::{Decoder, RecordView, SchemaRegistry};
use notiflow_loadgen::generator::{Generator, Kind, Shape};

const N: usize = 100_000;

fn shape(avro_share: f64) -> Shape {
    Shape {
        seed: 7,
        clients: 5000,
        rate: 1160.0,
        start: 1_795_464_000_000_000,
        avro_share,
        content_type_share: 0.0,
        duplicate_share: 0.0,
        malformed_share: 0.0,
    }
}

/// N generated records of one format: (key, value, content-type, timestamp).
fn records(avro_share: f64) -> Vec<(Vec<u8>, Vec<u8>, String, i64)> {
    let mut g = Generator::new(shape(avro_share), None);
    (0..N)
        .map(|_| {
            let r = g.next_record();
            assert_eq!(r.kind, Kind::Valid);
            (
                r.key.unwrap().to_vec(),
                r.value.unwrap().to_vec(),
                r.content_type.unwrap_or_default().to_string(),
                r.arrival,
            )
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for (name, share) in [("json", 0.0), ("avro", 1.0)] {
        let recs = records(share);
        let views: Vec<RecordView<'_>> = recs
            .iter()
            .map(|(k, v, ct, ts)| RecordView {
                key: Some(k),
                value: Some(v),
                content_type: (!ct.is_empty()).then_some(ct.as_bytes()),
                timestamp: *ts,
                clock: *ts,
                producer_clock: false,
            })
            .collect();
        let mut dec = Decoder::new(SchemaRegistry::builtin());
        rt.block_on(dec.prepare(&views)).unwrap();
        let bytes: usize = recs.iter().map(|r| r.1.len()).sum();
        eprintln!("{name}: mean value size {} bytes", bytes / N);
        let mut g = c.benchmark_group("decode_validate");
        g.throughput(Throughput::Elements(N as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut ok = 0usize;
                for v in &views {
                    ok += usize::from(dec.decode(v).is_ok());
                }
                assert_eq!(ok, N);
                ok
            })
        });
        g.finish();
    }
}

fn generate(c: &mut Criterion) {
    let mut g = c.benchmark_group("generate_encode");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("mix_30pct_avro", |b| {
        b.iter_batched(
            || {
                Generator::new(
                    Shape {
                        duplicate_share: 0.005,
                        ..shape(0.3)
                    },
                    None,
                )
            },
            |mut gen_| {
                let mut bytes = 0usize;
                for _ in 0..N {
                    bytes += gen_.next_record().value.map_or(0, <[u8]>::len);
                }
                bytes
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, decode, generate);
criterion_main!(benches);
