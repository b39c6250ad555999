//! Bad config stops start-up with the field that is wrong, and exit code 2.

use crate::notiflow;

fn fails_naming(cmd: &mut std::process::Command, field: &str) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(field), "{field} not named in: {stderr}");
}

#[test]
fn bad_config_is_refused_with_the_field_named() {
    fails_naming(
        notiflow()
            .arg("config")
            .env("NOTIFLOW__KAFKA__PARTITIONS", "lots"),
        "kafka.partitions",
    );
    fails_naming(
        notiflow()
            .arg("config")
            .env("NOTIFLOW__GEN__AVRO_SHARE", "1.5"),
        "gen.avro_share",
    );
    fails_naming(
        notiflow()
            .arg("config")
            .env("NOTIFLOW__KAFKA__BROKERS", "nohostport"),
        "kafka.brokers",
    );
    fails_naming(
        notiflow()
            .arg("config")
            .env("NOTIFLOW__TRACES__OTLP_ENDPOINT", "collector:4318"),
        "traces.otlp_endpoint",
    );
    fails_naming(
        notiflow()
            .arg("config")
            .env("NOTIFLOW__API__LISTEN", "everywhere"),
        "api.listen",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[ingest]\nbatch_max_records = 0\n").unwrap();
    fails_naming(
        notiflow().arg("--config").arg(&file).arg("config"),
        "ingest.batch_max_records",
    );
    std::fs::write(&file, "[kafka]\ntopics = \"x\"\n").unwrap();
    fails_naming(
        notiflow().arg("--config").arg(&file).arg("config"),
        "topics",
    );
    fails_naming(
        notiflow()
            .arg("--config")
            .arg(dir.path().join("missing.toml"))
            .arg("config"),
        "missing.toml",
    );
}

#[test]
fn good_config_prints_the_effective_values() {
    let out = notiflow()
        .arg("config")
        .env("NOTIFLOW__KAFKA__TOPIC", "custom.topic")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("topic = \"custom.topic\""), "{text}");
    assert!(text.contains("[gen]"), "{text}");
}

/// `notiflow config` shows the effective values but never a secret: the
/// S3 secret key, librdkafka passwords, and the passwords of URLs.
#[test]
fn the_printed_config_holds_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.toml");
    std::fs::write(
        &file,
        "[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.password\" = \"kafka-pass-1\"\n",
    )
    .unwrap();
    let out = notiflow()
        .arg("--config")
        .arg(&file)
        .arg("config")
        .env("NOTIFLOW__LAKE__S3__SECRET_ACCESS_KEY", "s3-secret-2")
        .env(
            "NOTIFLOW__REDIS__URL",
            "redis://:redis-pass-3@127.0.0.1:6379/0",
        )
        .env(
            "NOTIFLOW__LAKE__CATALOG_URI",
            "postgres://lake:pg-pass-4@db.internal:5432/catalog",
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in ["kafka-pass-1", "s3-secret-2", "redis-pass-3", "pg-pass-4"] {
        assert!(!text.contains(secret), "{secret} printed:\n{text}");
    }
    // What is not secret still shows.
    for kept in [
        "SASL_SSL",
        "redis://:<redacted>@127.0.0.1:6379/0",
        "postgres://lake:<redacted>@db.internal:5432/catalog",
        "secret_access_key = \"<redacted>\"",
    ] {
        assert!(text.contains(kept), "{kept} missing:\n{text}");
    }
}
