//! The monitoring shipped in `deploy/monitoring`, checked without a
//! Prometheus: the alerting rules load (`promtool check rules`), their unit
//! tests pass (`promtool test rules`), and the dashboard is well-formed.

use std::{path::Path, process::Command};

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
