//! In-process hot path: decode → validate → dedup → aggregate, one core.
//!
//! `cargo bench -p notiflow-aggregator --bench aggregate`; figures in BENCHMARKS.md.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use notiflow_aggregator::batch::{Owned, PartitionState, Retention, SourceRecord, process};
use notiflow_ingest::dedup::Dedup;
use notiflow_ingest::{Decoder, RecordView, SchemaRegistry};
use notiflow_loadgen::fixture::{OwnedRecord, RecordStream};
use notiflow_loadgen::generator::Shape;

const N: usize = 200_000;
const BATCH: usize = 50_000;
const PARTITIONS: i32 = 8;

fn shape() -> Shape {
    Shape {
        seed: 11,
        clients: 5000,
        rate: 1160.0,
        start: 1_795_464_000_000_000,
        avro_share: 0.3,
        content_type_share: 0.0,
        duplicate_share: 0.005,
        malformed_share: 0.0,
    }
}

fn views(recs: &[OwnedRecord]) -> Vec<SourceRecord<'_>> {
    recs.iter().map(OwnedRecord::source).collect()
}

fn aggregate(c: &mut Criterion) {
    let recs = RecordStream::new(shape(), PARTITIONS).take(N);
    let views = views(&recs);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut dec = Decoder::new(SchemaRegistry::builtin());
    let plain: Vec<RecordView<'_>> = views.iter().map(|v| v.view).collect();
    rt.block_on(dec.prepare(&plain)).unwrap();
    let retention = Retention::new(24, 48, 400);
    let mut g = c.benchmark_group("aggregate");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("decode_dedup_aggregate", |b| {
        b.iter_batched(
            || -> Owned {
                (0..PARTITIONS)
                    .map(|p| (p, PartitionState::loaded(None, Dedup::new(24))))
                    .collect()
            },
            |mut owned| {
                let mut counted = 0;
                for chunk in views.chunks(BATCH) {
                    let out = process(chunk.iter().copied(), &mut owned, &dec, retention);
                    counted += out.stats.counted;
                }
                assert!(counted > (N as u64) * 99 / 100);
                counted
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = aggregate
}
criterion_main!(benches);
