//! Every channel appears everywhere a channel must appear: its sender crate, the list of
//! services, the deployment files, the topology and message-flow docs, the configuration
//! reference and the JSON Schemas. A channel added to `Channel::ALL` without one of them (or
//! one of them left behind) fails here with the file to edit; docs/adding-a-channel.md is the
//! same list, in order. The SQL side is checked by `herald-storage`'s `sql_lists` test.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use messaging_core::Channel;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Each `(file, text)` that must appear, for one channel. Collected rather than asserted one by
/// one, so a new channel sees its whole to-do list in one failure.
fn missing_for(channel: Channel) -> Vec<String> {
    let name = channel.as_str();
    let sender = format!("sender-{name}");
    let queue = format!("herald.send.{name}");
    let needles: Vec<(String, String)> = vec![
        (
            format!("crates/{sender}/Cargo.toml"),
            format!("name = \"{sender}\""),
        ),
        (
            format!("crates/{sender}/src/main.rs"),
            format!("\"{sender}\""),
        ),
        ("scripts/herald-services.sh".into(), format!("\"{sender}=")),
        ("deploy/Dockerfile".into(), format!("AS {sender}\n")),
        ("deploy/Dockerfile".into(), format!("/out/{sender} ")),
        (
            "deploy/docker-compose.yml".into(),
            format!("\n  {sender}:\n"),
        ),
        (
            "deploy/docker-compose.yml".into(),
            format!("target: {sender}\n"),
        ),
        (
            // The ScaledObject's `queueName`, or for a sender that runs one replica (its bot
            // listens alone) the header comment naming its queue.
            format!("deploy/k8s/{sender}.yaml"),
            queue.clone(),
        ),
        (
            "deploy/k8s/kustomization.yaml".into(),
            format!("- {sender}.yaml"),
        ),
        (
            "deploy/k8s/kustomization.yaml".into(),
            format!("herald/{sender}"),
        ),
        ("deploy/README.md".into(), format!("`{sender}`")),
        ("docs/topology.md".into(), format!("`{{p}}.send.{name}`")),
        ("docs/asyncapi.yaml".into(), format!("\n  {queue}:\n")),
        (
            "docs/configuration.md".into(),
            format!("| {sender} | `127.0.0.1:"),
        ),
        ("docs/architecture.md".into(), format!("`{sender}`")),
        ("README.md".into(), format!("{queue} ")),
    ];
    needles
        .into_iter()
        .filter(|(file, text)| {
            std::fs::read_to_string(root().join(file)).map_or(true, |body| !body.contains(text))
        })
        .map(|(file, text)| format!("{file}: {text:?}"))
        .collect()
}

#[test]
fn every_channel_appears_wherever_a_channel_must() {
    let missing: Vec<String> = Channel::ALL.iter().flat_map(|&c| missing_for(c)).collect();
    assert!(
        missing.is_empty(),
        "missing (see docs/adding-a-channel.md):\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_schemas_list_every_channel_and_legacy_code() {
    let job = read("docs/schemas/send-job.v1.json");
    let legacy = read("docs/schemas/legacy-message.json");
    for channel in Channel::ALL {
        assert!(
            job.contains(&format!("\"{}\"", channel.as_str())),
            "send-job.v1.json lacks {channel} (run `just schemas`)"
        );
        assert!(
            legacy.contains(&format!("\"{}\"", channel.legacy_code())),
            "legacy-message.json lacks {} (run `just schemas`)",
            channel.legacy_code()
        );
    }
}

#[test]
fn no_sender_crate_lacks_a_channel() {
    // The other direction: a `sender-*` service crate (one with a main.rs) is a channel's.
    let crates = std::fs::read_dir(root().join("crates")).unwrap();
    for entry in crates {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let Some(channel) = name.strip_prefix("sender-") else {
            continue;
        };
        if !dir.join("src/main.rs").exists() {
            continue; // a library, such as sender-runtime
        }
        assert!(
            channel.parse::<Channel>().is_ok(),
            "crates/{name} has no Channel variant {channel:?}"
        );
    }
}
