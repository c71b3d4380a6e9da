//! The monitoring shipped in `deploy/monitoring`, checked without a
//! Prometheus: the alerting rules load (`promtool check rules`), their unit
//! tests pass (`promtool test rules`), the dashboard is well-formed, and
//! every metric either names is one the services export (both binaries are
//! started and their `/metrics` read).

use std::{collections::BTreeSet, path::Path, process::Command, time::Duration};

use system_tests::{Process, addr_in, binary, http_get};

const START: Duration = Duration::from_secs(60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(repo().join("deploy/monitoring"))
        .output()
        .expect("promtool is required (scripts/ensure-deploy-tools installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alerting_rules_load_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", "alerts.yaml"]);
    assert!(checked.contains("SUCCESS: 8 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_has_a_unit_test_and_a_runbook() {
    let rules = std::fs::read_to_string(repo().join("deploy/monitoring/alerts.yaml")).unwrap();
    let tests = std::fs::read_to_string(repo().join("deploy/monitoring/alerts.test.yaml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 8, "{alerts:?}");
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no unit test in alerts.test.yaml"
        );
    }
    assert_eq!(
        rules.matches("runbook: docs/runbooks.md#").count(),
        alerts.len(),
        "every alert names its runbook"
    );
}

#[test]
fn the_dashboard_is_grafana_json_with_queries() {
    let text =
        std::fs::read_to_string(repo().join("deploy/monitoring/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(dashboard["uid"], "marketplace-chat");
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries = panels
        .iter()
        .filter_map(|panel| panel["targets"].as_array())
        .flatten()
        .filter(|target| target["expr"].as_str().is_some_and(|e| !e.is_empty()))
        .count();
    assert!(queries >= 30, "{queries} queries");
}

/// Every metric name in `text` (PromQL), except Prometheus's own `up`;
/// quoted label values are left out.
fn metric_names(text: &str) -> BTreeSet<String> {
    let text: String = text.split('"').step_by(2).collect::<Vec<_>>().join(" ");
    let text = text.as_str();
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut start = None;
    for (i, &b) in bytes.iter().chain(b" ").enumerate() {
        let word = b.is_ascii_alphanumeric() || b == b'_' || b == b':';
        match (word, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                let name = &text[s..i];
                if name.starts_with("chat_") || name.starts_with("process_") {
                    names.insert(name.to_owned());
                }
                start = None;
            }
            _ => {}
        }
    }
    names
}

/// The sample names a `/metrics` page can have, from its `# TYPE` lines
/// (so families with no series yet count too).
fn exported(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
        match kind {
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

const SECRET: &str = "monitoring-test-secret-of-at-least-32-bytes";

#[test]
fn every_metric_the_rules_and_dashboard_name_is_exported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut core = Process::start(
        &binary("chat-core"),
        &[],
        dir.path(),
        &[
            ("JWT_SECRET", SECRET),
            ("DATABASE_URL", "sqlite://./chat.db"),
            ("CHAT_CORE_GRPC_ADDR", "127.0.0.1:0"),
            ("CHAT_CORE_HTTP_ADDR", "127.0.0.1:0"),
        ],
    );
    let line = core.wait_for_line("chat-core listening", START);
    let (grpc, core_http) = (addr_in(&line, "grpc"), addr_in(&line, "http"));
    let core_url = format!("http://{grpc}");
    let mut gateway = Process::start(
        &binary("chat-gateway"),
        &[],
        dir.path(),
        &[
            ("JWT_SECRET", SECRET),
            ("CHAT_CORE_URL", core_url.as_str()),
            ("GATEWAY_ADDR", "127.0.0.1:0"),
        ],
    );
    let line = gateway.wait_for_line("chat-gateway listening", START);
    let gateway_addr = addr_in(&line, "addr");

    // Families with labels show once they have a series: one request.
    assert_eq!(http_get(gateway_addr, "/healthz").0, 200);
    let (status, core_page) = http_get(core_http, "/metrics");
    assert_eq!(status, 200);
    let (status, gateway_page) = http_get(gateway_addr, "/metrics");
    assert_eq!(status, 200);
    let mut exported_names = exported(&core_page);
    exported_names.extend(exported(&gateway_page));
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            core_page.contains(&format!("\n{family} ")),
            "chat-core {family}"
        );
        assert!(
            gateway_page.contains(&format!("\n{family} ")),
            "gateway {family}"
        );
    }

    let rules = std::fs::read_to_string(repo().join("deploy/monitoring/alerts.yaml")).unwrap();
    let rule_exprs: String = rules
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/monitoring/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let dashboard_exprs: String = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|panel| panel["targets"].as_array())
        .flatten()
        .filter_map(|target| target["expr"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let named = metric_names(&rule_exprs);
    assert!(named.len() >= 10, "{named:?}");
    let mut all = named.clone();
    all.extend(metric_names(&dashboard_exprs));
    let missing: Vec<&String> = all.difference(&exported_names).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/monitoring but exported by neither service: {missing:?}\n\
         exported: {exported_names:?}"
    );
    core.terminate(Duration::from_secs(30));
    gateway.terminate(Duration::from_secs(30));
}
