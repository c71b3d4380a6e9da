//! The labelled corpus and how the detector is scored on it; shared by the
//! corpus test and the `corpus-bench` example.

use std::collections::BTreeSet;

use contact_guard::{ContactDetector, ContactKind, kinds};

/// One labelled line: the kinds of contact detail it hides (none for an
/// innocent line) and its text.
pub struct Line {
    pub expected: BTreeSet<ContactKind>,
    pub text: String,
}

/// The line sets under `tests/` the rules were tuned on: `corpus` (the
/// labelled corpus, written before the rules), `heldout` and `unseen`
/// (each written after a round of tuning, measured, then used to tune).
pub const TUNED_SETS: [&str; 3] = ["corpus", "heldout", "unseen"];

/// Lines written after all tuning and never used to change the rules.
#[allow(dead_code)]
pub const FRESH_SET: &str = "fresh";

/// Reads every `*.tsv` file of `tests/<name>/`: `kinds<TAB>text`, `kinds` a
/// comma list of email, phone, link, handle or `-`; `#` starts a comment
/// line.
pub fn load(name: &str) -> Vec<Line> {
    let dir = format!("{}/tests/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("corpus directory exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "tsv"))
        .collect();
    files.sort();
    let mut lines = Vec::new();
    for file in files {
        let content = std::fs::read_to_string(&file).expect("readable corpus file");
        for (number, line) in content.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (labels, text) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("{}:{}: no tab", file.display(), number + 1));
            let expected = if labels == "-" {
                BTreeSet::new()
            } else {
                labels.split(',').map(|l| parse_kind(l.trim())).collect()
            };
            lines.push(Line {
                expected,
                text: text.to_owned(),
            });
        }
    }
    lines
}

fn parse_kind(label: &str) -> ContactKind {
    match label {
        "email" => ContactKind::Email,
        "phone" => ContactKind::Phone,
        "link" => ContactKind::Link,
        "handle" => ContactKind::Handle,
        other => panic!("unknown kind {other:?} in corpus"),
    }
}

/// How the detector did on the corpus.
#[derive(Default)]
pub struct Score {
    pub positives: usize,
    /// Positive lines with at least one finding.
    pub found: usize,
    /// Positive lines whose reported kinds are exactly the labelled ones.
    pub kinds_exact: usize,
    pub innocents: usize,
    /// Innocent lines with a finding.
    pub false_positives: usize,
    /// Positive lines with no finding.
    pub misses: Vec<String>,
    /// Innocent lines with a finding, and what was found.
    pub flagged: Vec<String>,
    /// Positive lines found with other kinds than labelled.
    pub wrong_kinds: Vec<String>,
}

impl Score {
    pub fn recall(&self) -> f64 {
        self.found as f64 / self.positives.max(1) as f64
    }
    pub fn false_positive_rate(&self) -> f64 {
        self.false_positives as f64 / self.innocents.max(1) as f64
    }
    pub fn kind_accuracy(&self) -> f64 {
        self.kinds_exact as f64 / self.positives.max(1) as f64
    }
}

/// Runs the detector over every line and scores it.
pub fn score(detector: &ContactDetector, lines: &[Line]) -> Score {
    let mut score = Score::default();
    for line in lines {
        let findings = detector.detect(&line.text);
        let found: BTreeSet<ContactKind> = kinds(&findings).into_iter().collect();
        let shown = || {
            let parts: Vec<String> = findings
                .iter()
                .map(|f| format!("{}={:?}", f.kind.as_str(), &line.text[f.range.clone()]))
                .collect();
            format!("{:?} -> [{}]", line.text, parts.join(", "))
        };
        if line.expected.is_empty() {
            score.innocents += 1;
            if !findings.is_empty() {
                score.false_positives += 1;
                score.flagged.push(shown());
            }
        } else {
            score.positives += 1;
            if findings.is_empty() {
                score
                    .misses
                    .push(format!("{:?} (expected {:?})", line.text, line.expected));
            } else {
                score.found += 1;
                if found == line.expected {
                    score.kinds_exact += 1;
                } else {
                    score
                        .wrong_kinds
                        .push(format!("{} expected {:?}", shown(), line.expected));
                }
            }
        }
    }
    score
}
