//! Prints the detector's recall, false-positive rate and kind accuracy on
//! its labelled corpus, then how many messages per second one thread
//! checks.
//!
//! Run: `cargo run --release -p contact-guard --example corpus-bench`
//! (optionally followed by the number of passes over the corpus; default
//! 400).

#[path = "../tests/support/corpus.rs"]
mod corpus;

use std::hint::black_box;
use std::time::Instant;

use contact_guard::ContactDetector;

fn main() {
    let passes: usize = std::env::args()
        .nth(1)
        .map_or(400, |a| a.parse().expect("passes is a number"));
    let started = Instant::now();
    let detector = ContactDetector::new();
    let compile = started.elapsed();
    let mut lines = Vec::new();
    for set in corpus::TUNED_SETS.into_iter().chain([corpus::FRESH_SET]) {
        let set_lines = corpus::load(set);
        let score = corpus::score(&detector, &set_lines);
        for miss in &score.misses {
            println!("{set}: missed: {miss}");
        }
        for flagged in &score.flagged {
            println!("{set}: false positive: {flagged}");
        }
        for wrong in &score.wrong_kinds {
            println!("{set}: other kinds: {wrong}");
        }
        println!(
            "{set}: {} lines; recall {:.1}% ({}/{}), false-positive rate {:.1}% ({}/{}), kind accuracy {:.1}%",
            set_lines.len(),
            score.recall() * 100.0,
            score.found,
            score.positives,
            score.false_positive_rate() * 100.0,
            score.false_positives,
            score.innocents,
            score.kind_accuracy() * 100.0
        );
        lines.extend(set_lines);
    }

    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    let innocent: Vec<&str> = lines
        .iter()
        .filter(|l| l.expected.is_empty())
        .map(|l| l.text.as_str())
        .collect();
    // Warm up, then time single-threaded passes.
    for text in &texts {
        black_box(detector.detect(text));
    }
    // Wall time counts the moments other processes hold the core; the
    // thread's own CPU time (Linux: /proc/thread-self/schedstat) does not,
    // so both are printed.
    let rate = |sample: &[&str]| {
        let cpu_before = thread_cpu_ns();
        let started = Instant::now();
        for _ in 0..passes {
            for text in sample {
                black_box(detector.detect(black_box(text)));
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = thread_cpu_ns()
            .zip(cpu_before)
            .map(|(after, before)| (after - before) as f64 / 1e9);
        let messages = (passes * sample.len()) as f64;
        (messages / wall, cpu.map(|cpu| messages / cpu))
    };
    let show = |(wall, cpu): (f64, Option<f64>)| match cpu {
        Some(cpu) => format!("{wall:.0} messages/s wall, {cpu:.0} per CPU-second"),
        None => format!("{wall:.0} messages/s wall"),
    };
    println!(
        "rules compiled in:   {:.1} ms",
        compile.as_secs_f64() * 1000.0
    );
    println!(
        "speed, all lines:    {} (one thread, {passes} passes)",
        show(rate(&texts))
    );
    println!(
        "speed, innocent:     {} (one thread, {passes} passes)",
        show(rate(&innocent))
    );
}

/// Nanoseconds this thread has spent on a CPU, where Linux tells.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}
