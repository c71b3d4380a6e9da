//! The detector against its labelled corpus of marketplace chat: recall on
//! the lines hiding contact details, false positives on the innocent ones.

#[path = "support/corpus.rs"]
mod corpus;

use contact_guard::ContactDetector;

#[test]
fn corpus_has_enough_lines_of_both_sorts() {
    let lines = corpus::load();
    let positives = lines.iter().filter(|l| !l.expected.is_empty()).count();
    let innocents = lines.len() - positives;
    assert!(lines.len() >= 300, "{} lines", lines.len());
    assert!(positives * 2 >= lines.len(), "{positives} of {} lines hide contact details", lines.len());
    assert!(innocents >= 150, "{innocents} innocent lines");
}

#[test]
fn recall_and_false_positives_on_the_corpus() {
    let detector = ContactDetector::new();
    let lines = corpus::load();
    let score = corpus::score(&detector, &lines);
    for miss in &score.misses {
        println!("missed: {miss}");
    }
    for flagged in &score.flagged {
        println!("false positive: {flagged}");
    }
    for wrong in &score.wrong_kinds {
        println!("other kinds: {wrong}");
    }
    println!(
        "recall {:.1}% ({}/{}), false positives {:.1}% ({}/{}), kind accuracy {:.1}%",
        score.recall() * 100.0,
        score.found,
        score.positives,
        score.false_positive_rate() * 100.0,
        score.false_positives,
        score.innocents,
        score.kind_accuracy() * 100.0,
    );
    assert!(score.recall() >= 0.95, "recall {:.3}", score.recall());
    assert!(score.false_positive_rate() <= 0.01, "false positives {:.3}", score.false_positive_rate());
}
