//! The Kubernetes manifests of `deploy/kubernetes/`: valid against Kubernetes' own schemas
//! (kubernetes-validate, offline, strict: unknown fields fail), and running what the image has.

use std::path::{Path, PathBuf};
use std::process::Command;

fn manifests() -> Vec<PathBuf> {
    let dir = testkit::workspace().join("deploy/kubernetes");
    let mut files = Vec::new();
    for folder in [dir.clone(), dir.join("migration-job"), dir.join("example-secret")] {
        for entry in std::fs::read_dir(&folder).expect("deploy/kubernetes") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn validate(files: &[PathBuf], version: &str) -> std::process::Output {
    let program = testkit::workspace().join("target/tools/kubernetes-validate/bin/kubernetes-validate");
    assert!(program.is_file(), "kubernetes-validate not found: run `cargo xtask test`, which installs it");
    Command::new(program).args(["--strict", "-k", version]).args(files).output().expect("kubernetes-validate")
}

#[test]
fn the_manifests_are_valid_for_kubernetes_1_30_to_1_37() {
    let files = manifests();
    assert!(files.len() >= 6, "{files:?}");
    for version in ["1.30.0", "1.37.0"] {
        let output = validate(&files, version);
        let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "Kubernetes {version}:\n{text}");
        assert!(!text.contains("WARN") && !text.contains("ERROR"), "Kubernetes {version}:\n{text}");
    }
}

#[test]
fn the_validator_rejects_a_misspelt_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = dir.path().join("backend.yaml");
    let text = std::fs::read_to_string(testkit::workspace().join("deploy/kubernetes/backend.yaml")).expect("read");
    std::fs::write(&broken, text.replace("readinessProbe", "readinesProbe")).expect("write");
    assert!(!validate(&[broken], "1.37.0").status.success(), "a misspelt field passed");
}

/// Every container runs a binary the image holds, the probes ask the API's own routes, and the
/// password comes from a Secret, never from the manifest's own env.
#[test]
fn the_manifests_run_what_the_image_has() {
    let dockerfile = std::fs::read_to_string(testkit::workspace().join("backend/Dockerfile")).expect("Dockerfile");
    let routes = std::fs::read_to_string(testkit::workspace().join("backend/src/bin/backend.rs")).expect("routes");
    let mut containers = 0;
    for file in manifests() {
        let text = std::fs::read_to_string(&file).expect("read");
        assert!(
            !text.contains("POSTGRES_PASSWORD") || file.ends_with(Path::new("example-secret/secret.yaml")),
            "{file:?}"
        );
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: serde_yaml_ng::Value = serde::Deserialize::deserialize(document).expect("yaml");
            let spec = &value["spec"]["template"]["spec"];
            let all = [&spec["initContainers"], &spec["containers"]];
            for container in all.iter().filter_map(|c| c.as_sequence()).flatten() {
                containers += 1;
                // The binary may stand alone or inside a shell command (`until /app/xtask ...`).
                let command = container["command"].as_sequence().expect("command");
                let words = command.iter().filter_map(|c| c.as_str()).flat_map(str::split_whitespace);
                let binary = words.into_iter().find(|w| w.starts_with("/app/")).expect("a binary of /app/");
                let name = binary.trim_start_matches("/app/");
                assert!(dockerfile.contains(&format!("target/release/{name}")), "{file:?}: the image has no {binary}");
                for probe in ["readinessProbe", "livenessProbe"] {
                    if let Some(path) = container[probe]["httpGet"]["path"].as_str() {
                        assert!(routes.contains(&format!("route(\"{path}\"")), "{file:?}: no route {path}");
                    }
                }
                let from_secret = container["envFrom"]
                    .as_sequence()
                    .is_some_and(|sources| sources.iter().any(|s| s["secretRef"]["name"].as_str().is_some()));
                assert!(from_secret, "{file:?}: the container gets no Secret");
            }
        }
    }
    assert!(containers >= 7, "found {containers} containers");
}
