//! Every word PostgreSQL's search index holds, in a table of its own
//! (`search_words`), so that a query's last word, a prefix, can be asked
//! of the index as the whole words it stands for.
//!
//! Why: PostgreSQL's text index answers a prefix (`'deadl':*`) by first
//! gathering every message holding any word that starts with it, before it
//! can intersect that with the query's other words and the caller's member
//! mark. For a prefix of a common word that is hundreds of thousands of
//! rows: 176 ms for `milestone deadl…` over 10 million messages where the
//! same query with whole words takes 32 ms, because for whole words the
//! index skips through the rarest list instead. Looking the prefix up here
//! first turns it into the few words it matches.
//!
//! The table holds a superset of the indexed words: a batch adds the new
//! words of its messages in its own transaction, an edit adds its new
//! words, and nothing is ever removed (a word left by a deleted or edited
//! message only expands a prefix into a word that matches nothing). So a
//! prefix expanded through it finds exactly what the prefix itself would.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

/// PostgreSQL's text search leaves out longer words (they are not in the
/// index), and a B-tree entry this long would be refused.
const MAX_WORD_BYTES: usize = 2047;

/// Adds words to the vocabulary, `$1` being them separated by single
/// spaces (from [`words_of`]). In word order, and last in its transaction
/// after every other lock it takes, so that writers adding the same words
/// queue rather than deadlock.
pub(crate) const ADD_WORDS: &str = "INSERT INTO search_words (word) \
     SELECT w FROM unnest(string_to_array($1, ' ')) AS w ORDER BY w ON CONFLICT DO NOTHING";

/// The words of `texts` (indexed texts: words separated by single spaces)
/// that the vocabulary holds, sorted and without repeats, except those
/// `skip` says are there already.
fn words_of<'a>(
    texts: impl IntoIterator<Item = &'a str>,
    skip: impl Fn(&str) -> bool,
) -> Vec<&'a str> {
    let mut words: Vec<&str> = texts
        .into_iter()
        .flat_map(|text| text.split(' '))
        .filter(|word| !word.is_empty() && word.len() <= MAX_WORD_BYTES && !skip(word))
        .collect();
    words.sort_unstable();
    words.dedup();
    words
}

/// The words an edit's new text adds, as [`ADD_WORDS`] takes them.
pub(crate) fn all_words(text: &str) -> String {
    words_of([text], |_| false).join(" ")
}

/// How many words a replica remembers as stored, per generation (two are
/// kept): enough for a chat's everyday vocabulary, so that a batch usually
/// adds nothing to the table and costs it no statement.
const GENERATION: usize = 50_000;

/// The words this replica knows to be in `search_words` (committed by one
/// of its batches). Bounded: when the newer generation fills it becomes
/// the older one and the oldest is forgotten, so frequent words stay known
/// while one-off words (numbers, typos) pass through. Forgetting a word
/// only costs inserting it again, which the table ignores. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct KnownWords {
    generations: Arc<Mutex<[HashSet<Box<str>>; 2]>>,
}

impl KnownWords {
    /// The words of `texts` (indexed texts: words separated by single
    /// spaces) not known to be stored, sorted and without repeats: the
    /// order every writer inserts them in, so that two batches adding the
    /// same new words wait for each other instead of deadlocking.
    pub(crate) fn unknown<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        let Ok(known) = self.generations.lock() else {
            return Vec::new();
        };
        words_of(texts, |word| {
            known.iter().any(|generation| generation.contains(word))
        })
    }

    /// Remembers `words` as stored; called once their transaction committed.
    pub(crate) fn learned(&self, words: &[&str]) {
        let Ok(mut known) = self.generations.lock() else {
            return;
        };
        for word in words {
            if known[0].len() >= GENERATION {
                let newer = std::mem::take(&mut known[0]);
                known[1] = newer;
            }
            known[0].insert((*word).into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_words_come_sorted_once_and_known_ones_not_at_all() {
        let known = KnownWords::default();
        let words = known.unknown(["zebra invoice zebra", "alpha", ""]);
        assert_eq!(words, ["alpha", "invoice", "zebra"]);
        known.learned(&words);
        assert!(known.unknown(["zebra alpha invoice"]).is_empty());
        assert_eq!(known.unknown(["invoice invoices"]), ["invoices"]);
    }

    #[test]
    fn an_edit_adds_all_its_words_sorted_once() {
        assert_eq!(all_words("zebra invoice zebra"), "invoice zebra");
        assert_eq!(all_words(""), "");
    }

    #[test]
    fn words_too_long_for_the_index_are_left_out() {
        let known = KnownWords::default();
        let long = "a".repeat(MAX_WORD_BYTES + 1);
        let fits = "b".repeat(MAX_WORD_BYTES);
        let text = format!("{long} {fits}");
        assert_eq!(known.unknown([text.as_str()]), [fits.as_str()]);
    }

    #[test]
    fn memory_is_two_generations_at_most() {
        let known = KnownWords::default();
        let words: Vec<String> = (0..GENERATION * 3).map(|i| format!("w{i}")).collect();
        for word in &words {
            known.learned(&[word.as_str()]);
        }
        let generations = known.generations.lock().unwrap();
        assert!(generations.iter().map(HashSet::len).sum::<usize>() <= 2 * GENERATION);
        drop(generations);
        // The newest are known, the oldest forgotten (and would be added
        // again, which the table ignores).
        assert!(known.unknown([words.last().unwrap().as_str()]).is_empty());
        assert_eq!(known.unknown(["w0"]), ["w0"]);
    }
}
