//! The repository's Markdown stands alone: every link in every Markdown file
//! points at a file (and, with `#anchor`, a heading) inside the repository,
//! never at an outside address or a document the repository does not hold.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
}

/// Every Markdown file of the repository, outside build output and
/// installed packages.
fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | "node_modules" | ".git" | "data") {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// The text outside fenced code blocks and inline code spans.
fn prose(markdown: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop inline code: `[a](b)` inside backticks is not a link.
        for (i, piece) in line.split('`').enumerate() {
            if i % 2 == 0 {
                out.push_str(piece);
            }
        }
        out.push('\n');
    }
    out
}

/// The targets of inline links and images: `[text](target)`.
fn links(markdown: &str) -> Vec<String> {
    let text = prose(markdown);
    let mut found = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split_whitespace().next().unwrap_or_default();
        found.push(target.trim_matches(['<', '>']).to_owned());
        rest = &after[end..];
    }
    found
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as hyphens; repeats get `-1`, `-2`.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#').trim();
        let slug: String = heading
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let count = seen.entry(slug.clone()).or_insert(0);
        anchors.insert(if *count == 0 {
            slug.clone()
        } else {
            format!("{slug}-{count}")
        });
        *count += 1;
    }
    anchors
}

#[test]
fn every_markdown_link_points_at_a_file_and_heading_in_the_repository() {
    let mut files = Vec::new();
    markdown_files(repo(), &mut files);
    assert!(files.iter().any(|f| f.ends_with("docs/runbooks.md")));
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        let shown = file
            .strip_prefix(repo())
            .unwrap_or(file)
            .display()
            .to_string();
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") || link.starts_with("//") {
                broken.push(format!("{shown}: {link} (outside the repository)"));
                continue;
            }
            let (path, anchor) = link.split_once('#').unwrap_or((link.as_str(), ""));
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().expect("in a directory").join(path)
            };
            let Ok(target) = target.canonicalize() else {
                broken.push(format!("{shown}: {link} (no such file)"));
                continue;
            };
            if !target.starts_with(repo().canonicalize().unwrap()) {
                broken.push(format!("{shown}: {link} (outside the repository)"));
                continue;
            }
            if !anchor.is_empty() && target.extension().is_some_and(|e| e == "md") {
                let headings = anchors(&std::fs::read_to_string(&target).expect("read"));
                if !headings.contains(anchor) {
                    broken.push(format!("{shown}: {link} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_runbook_an_alert_names_exists() {
    let rules = std::fs::read_to_string(repo().join("deploy/monitoring/alerts.yaml")).unwrap();
    let runbooks = anchors(&std::fs::read_to_string(repo().join("docs/runbooks.md")).unwrap());
    for line in rules.lines() {
        if let Some(anchor) = line.trim().strip_prefix("runbook: docs/runbooks.md#") {
            assert!(
                runbooks.contains(anchor),
                "no runbook heading for #{anchor}"
            );
        }
    }
}

#[test]
fn anchors_follow_github() {
    let headings = anchors(
        "# API\n## REST API\n### Errors\n## Scaling the gateways\n### Errors\n```\n# not a heading\n```\n## `traceparent` and ids, 20,000 sockets\n",
    );
    for anchor in [
        "api",
        "rest-api",
        "errors",
        "errors-1",
        "scaling-the-gateways",
        "traceparent-and-ids-20000-sockets",
    ] {
        assert!(headings.contains(anchor), "{anchor} in {headings:?}");
    }
    assert!(!headings.contains("not-a-heading"));
    assert_eq!(
        links("see [a](docs/a.md#x) and `[b](nowhere)`\n```\n[c](nowhere)\n```\n![img](p.png)"),
        ["docs/a.md#x", "p.png"]
    );
}
