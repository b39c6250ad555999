//! The malformed-record corpus (`ingest/corpus/malformed.jsonl`): records that
//! break a rule of SPEC §2, each with the dead-letter reason it must get.
//!
//! Tests send it through the real broker; the load generator mixes it into
//! traffic when asked for malformed records. Regenerate the file with
//! `python3 ingest/corpus/make_corpus.py`.

use serde::Deserialize;

/// One malformed record and the reason code it must be dead-lettered with.
#[derive(Debug, Clone)]
pub struct CorpusRecord {
    /// What is wrong with it, in words.
    pub name: String,
    /// The expected [`crate::Reject::code`].
    pub expect: String,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// `content-type` header, if any.
    pub content_type: Option<String>,
    /// Record value (`None`: a tombstone).
    pub value: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct Line {
    name: String,
    expect: String,
    key: Option<String>,
    content_type: Option<String>,
    #[serde(default)]
    value_text: Option<String>,
    #[serde(default)]
    value_hex: Option<String>,
}

const CORPUS: &str = include_str!("../corpus/malformed.jsonl");

/// Every record of the corpus, in file order.
pub fn malformed() -> Vec<CorpusRecord> {
    CORPUS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| match serde_json::from_str::<Line>(l) {
            Ok(line) => Some(line),
            Err(e) => {
                tracing::error!(error = %e, "corpus line does not parse");
                None
            }
        })
        .map(|l| CorpusRecord {
            value: match (l.value_hex, l.value_text) {
                (Some(hex), _) => Some(from_hex(&hex)),
                (None, text) => text.map(String::into_bytes),
            },
            name: l.name,
            expect: l.expect,
            key: l.key.map(String::into_bytes),
            content_type: l.content_type,
        })
        .collect()
}

fn from_hex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks(2)
        .filter_map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Decoder, RecordView};
    use crate::registry::SchemaRegistry;

    #[tokio::test]
    async fn every_corpus_record_gets_its_reason() {
        let corpus = malformed();
        assert!(corpus.len() >= 30, "corpus has {} records", corpus.len());
        let mut names: Vec<_> = corpus.iter().map(|c| &c.name).collect();
        names.dedup();
        assert_eq!(names.len(), corpus.len());
        let views: Vec<_> = corpus
            .iter()
            .map(|c| RecordView {
                key: c.key.as_deref(),
                value: c.value.as_deref(),
                content_type: c.content_type.as_deref().map(str::as_bytes),
                timestamp: 1_795_464_062_000_000,
                clock: 1_795_464_062_000_000,
                producer_clock: false,
            })
            .collect();
        let mut dec = Decoder::new(SchemaRegistry::builtin());
        dec.prepare(&views).await.unwrap();
        for (c, v) in corpus.iter().zip(&views) {
            match dec.decode(v) {
                Ok(ev) => panic!("{}: decoded as {ev:?}", c.name),
                Err(r) => assert_eq!(r.code(), c.expect, "{}: {r}", c.name),
            }
        }
    }
}
