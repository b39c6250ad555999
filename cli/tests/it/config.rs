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
