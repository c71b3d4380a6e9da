//! The deployment, checked without a cluster: both kustomize overlays
//! render, every object validates against the Kubernetes schemas, the
//! policy checks pass (exceptions justified in deploy/checkov.yaml), and the
//! containers set exactly variables their binaries read.

use std::{collections::BTreeSet, path::Path, process::Command};

use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
}

fn render(overlay: &str) -> String {
    let output = Command::new("kubectl")
        .args(["kustomize", &format!("deploy/k8s/overlays/{overlay}")])
        .current_dir(repo())
        .output()
        .expect("kubectl is required (scripts/ensure-deploy-tools installs it)");
    assert!(
        output.status.success(),
        "{overlay} does not render: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

fn objects(yaml: &str) -> Vec<Value> {
    let mut python = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with PyYAML");
    use std::io::Write as _;
    python
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write");
    let output = python.wait_with_output().expect("python3");
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).expect("json")
}

fn write_temp(yaml: &str, name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, yaml).expect("write");
    (dir, path)
}

#[test]
fn overlays_render_and_validate_against_kubernetes_schemas() {
    for overlay in ["dev", "prod"] {
        let yaml = render(overlay);
        let kinds: BTreeSet<String> = objects(&yaml)
            .iter()
            .map(|o| o["kind"].as_str().unwrap_or_default().to_owned())
            .collect();
        for kind in [
            "Deployment",
            "Service",
            "Ingress",
            "Job",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ConfigMap",
        ] {
            assert!(kinds.contains(kind), "{overlay} has no {kind}");
        }
        let (_dir, path) = write_temp(&yaml, &format!("{overlay}.yaml"));
        let output = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", "1.33.0"])
            .arg(&path)
            .output()
            .expect("kubernetes-validate is required (scripts/ensure-deploy-tools)");
        assert!(
            output.status.success(),
            "{overlay} does not validate:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn policy_checks_pass() {
    let mut targets = Vec::new();
    let mut dirs = Vec::new();
    for overlay in ["dev", "prod"] {
        let (dir, path) = write_temp(&render(overlay), &format!("{overlay}.yaml"));
        targets.push((path, "kubernetes"));
        dirs.push(dir);
    }
    targets.push((repo().join("deploy/Dockerfile"), "dockerfile"));
    for (path, framework) in targets {
        let output = Command::new("checkov")
            .arg("--config-file")
            .arg(repo().join("deploy/checkov.yaml"))
            .arg("-f")
            .arg(&path)
            .args(["--framework", framework])
            .output()
            .expect("checkov is required (scripts/ensure-deploy-tools)");
        assert!(
            output.status.success(),
            "{} fails policy checks:\n{}",
            path.display(),
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

#[test]
fn containers_set_exactly_variables_their_binaries_read() {
    for overlay in ["dev", "prod"] {
        for object in objects(&render(overlay)) {
            let spec = match object["kind"].as_str() {
                Some("Deployment" | "Job") => &object["spec"]["template"]["spec"],
                _ => continue,
            };
            for container in spec["containers"].as_array().expect("containers") {
                let read: &[&str] = match container["image"].as_str().unwrap_or_default() {
                    image if image.contains("/chat-core:") => chat_core::config::ENVIRONMENT,
                    image if image.contains("/chat-gateway:") => chat_gateway::config::ENVIRONMENT,
                    _ => continue,
                };
                let set: Vec<&str> = container["env"]
                    .as_array()
                    .map(|env| env.iter().filter_map(|e| e["name"].as_str()).collect())
                    .unwrap_or_default();
                for name in &set {
                    assert!(
                        read.contains(name),
                        "{overlay}: {} sets {name}, which its binary does not read",
                        container["name"]
                    );
                }
                for required in ["JWT_SECRET", "LOG_FORMAT"] {
                    assert!(
                        set.contains(&required),
                        "{overlay}: {} lacks {required}",
                        container["name"]
                    );
                }
            }
        }
    }
}

/// A value of the ConfigMap `chat-config`, in seconds (`*_MS` keys are
/// milliseconds).
fn config_seconds(objects: &[Value], key: &str) -> f64 {
    let config = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "chat-config")
        .expect("ConfigMap chat-config");
    let value: f64 = config["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("chat-config has no {key}"))
        .parse()
        .expect("a number");
    if key.ends_with("_MS") {
        value / 1000.0
    } else {
        value
    }
}

#[test]
fn chat_core_stops_so_that_no_client_notices() {
    for overlay in ["dev", "prod"] {
        let objects = objects(&render(overlay));
        let core = objects
            .iter()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "chat-core")
            .expect("chat-core Deployment");
        let pod = &core["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        // Ready exactly while chat-core's health says SERVING, which it
        // stops saying the moment it starts shutting down.
        let readiness = &container["readinessProbe"]["grpc"];
        assert_eq!(readiness["service"], "chat.v1.ChatService", "{overlay}");
        assert_eq!(readiness["port"], 50051, "{overlay}");
        // Endpoints and the gateways' DNS (every 5 s) drop the pod first.
        let pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
            .as_array()
            .expect("a preStop command");
        assert_eq!(pre_stop[0], "sleep", "{overlay}");
        let pre_stop: f64 = pre_stop[1].as_str().expect("seconds").parse().expect("n");
        assert!(pre_stop >= 5.0, "{overlay}: preStop {pre_stop} s");
        // The whole stop fits the grace period: preStop, drain, in-flight
        // calls, then the writer's commit of what is queued.
        let drain = config_seconds(&objects, "CHAT_CORE_DRAIN_MS");
        let grace = config_seconds(&objects, "CORE_SHUTDOWN_GRACE_SECONDS");
        let needed = pre_stop + drain + grace + grace.max(5.0);
        let period = pod["terminationGracePeriodSeconds"]
            .as_f64()
            .expect("terminationGracePeriodSeconds");
        assert!(
            period >= needed,
            "{overlay}: {period} s is less than the {needed} s a stop can take"
        );
        // Voluntary disruptions keep a replica serving.
        let budget = objects
            .iter()
            .find(|o| o["kind"] == "PodDisruptionBudget" && o["metadata"]["name"] == "chat-core")
            .expect("chat-core PodDisruptionBudget");
        assert!(
            budget["spec"]["minAvailable"].as_i64().unwrap_or(0) >= 1,
            "{overlay}: {budget}"
        );
    }
}
