//! What full-text search matches, decided here once for both backends.
//!
//! PostgreSQL's text-search parser and SQLite's FTS5 tokenizer split and
//! fold text differently (hyphens, e-mail addresses, accents). So neither
//! sees raw content: both index the same normalized text, made here, in
//! which every word is a run of letters and digits, lowercased, with the
//! accents taken off Latin letters, separated by single spaces. A query
//! goes through the same normalization, so `Café` finds `cafe` and
//! `e-mail` finds `e mail` on both backends alike.

use unicode_normalization::char::{decompose_canonical, is_combining_mark};

/// Shortest and longest query, in characters after trimming.
pub const QUERY_CHARS: std::ops::RangeInclusive<usize> = 2..=200;

/// The text a message is indexed by.
pub fn index_text(content: &str) -> String {
    let mut out = String::with_capacity(content.len());
    let mut in_word = false;
    let mut after_latin = false;
    for c in content.chars() {
        if is_combining_mark(c) {
            // A mark typed after a Latin letter (e + U+0301) is an accent.
            if after_latin {
                continue;
            }
        }
        after_latin = false;
        if !c.is_alphanumeric() {
            in_word = false;
            continue;
        }
        if !in_word && !out.is_empty() {
            out.push(' ');
        }
        in_word = true;
        if is_latin_letter(c) {
            after_latin = true;
            push_folded_latin(&mut out, c);
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Length, in hex digits, of a member mark's hash.
const MEMBER_MARK_HEX: usize = 16;

/// The word PostgreSQL's index holds, beside a message's own words, for
/// each participant of its thread: `~` and the first 64 bits of the
/// SHA-256 of the user id, in hex. A user's search across their threads
/// asks the index for their mark along with the query's words, so the
/// index intersects the two and the database reads only the caller's
/// matches, not every message holding words that are common overall.
/// Indexed words are letters and digits only, so no query word equals or
/// starts a mark; a shared mark (a hash collision) only adds candidates
/// that the participant filter then drops. Participants never change, so
/// marks never go stale. `member_mark_sql!` computes the same in SQL.
pub fn member_mark(user_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(user_id.as_bytes());
    let mut mark = String::with_capacity(1 + MEMBER_MARK_HEX);
    mark.push('~');
    for byte in &digest[..MEMBER_MARK_HEX / 2] {
        mark.push_str(&format!("{byte:02x}"));
    }
    mark
}

/// [`member_mark`] of `p.user_id` as a PostgreSQL expression (a literal,
/// for `concat!`), for the statements that index a message without its
/// participants at hand: an edit, and the migration that marked the
/// messages stored before it (which spells it out again).
macro_rules! member_mark_sql {
    () => {
        "'~' || left(encode(sha256(convert_to(p.user_id, 'UTF8')), 'hex'), 16)"
    };
}
pub(crate) use member_mark_sql;

/// The words of a query, each as indexed: every one must occur in a
/// message, the last one also as the start of a longer word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchTerms {
    words: Vec<String>,
}

impl SearchTerms {
    /// The terms of `q`, which must hold 2 to 200 characters after
    /// trimming. A query of punctuation alone has no words (and matches
    /// nothing).
    pub fn parse(q: &str) -> Result<Self, &'static str> {
        let q = q.trim();
        if !QUERY_CHARS.contains(&q.chars().count()) {
            return Err("q: must be 2 to 200 characters");
        }
        let words = index_text(q)
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(SearchTerms { words })
    }

    /// Whether no message can match.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// As a PostgreSQL `tsquery` (for `to_tsquery('simple', …)`): each word
    /// quoted, the last one a prefix.
    pub fn tsquery(&self) -> String {
        let mut out = String::new();
        for (i, word) in self.words.iter().enumerate() {
            if i > 0 {
                out.push_str(" & ");
            }
            push_quoted(&mut out, word);
            if i + 1 == self.words.len() {
                out.push_str(":*");
            }
        }
        out
    }

    /// The last word, which also matches as the start of longer words.
    pub fn prefix(&self) -> Option<&str> {
        self.words.last().map(String::as_str)
    }

    /// [`Self::tsquery`] with the last word asked as exactly the indexed
    /// `words` it starts, instead of as a prefix (the two match the same
    /// messages when `words` are all of them); `None` when there are none,
    /// so that nothing can match.
    pub fn tsquery_with_last_as(&self, words: &[String]) -> Option<String> {
        let (_, before) = self.words.split_last()?;
        if words.is_empty() {
            return None;
        }
        let mut out = String::new();
        for word in before {
            push_quoted(&mut out, word);
            out.push_str(" & ");
        }
        out.push('(');
        for (i, word) in words.iter().enumerate() {
            if i > 0 {
                out.push_str(" | ");
            }
            push_quoted(&mut out, word);
        }
        out.push(')');
        Some(out)
    }

    /// As an FTS5 query: each word a quoted string, the last one a prefix.
    pub fn fts5(&self) -> String {
        let mut out = String::new();
        for (i, word) in self.words.iter().enumerate() {
            if i > 0 {
                out.push_str(" AND ");
            }
            out.push('"');
            out.push_str(word);
            out.push('"');
            if i + 1 == self.words.len() {
                out.push('*');
            }
        }
        out
    }
}

/// `word` as a quoted `tsquery` operand. Query words are letters and
/// digits, but words the index took from older rows may hold anything.
fn push_quoted(out: &mut String, word: &str) {
    out.push('\'');
    for c in word.chars() {
        if matches!(c, '\'' | '\\') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
}

/// Latin letters that may carry accents: Latin-1 Supplement, Latin
/// Extended-A and -B, and Latin Extended Additional.
fn is_latin_letter(c: char) -> bool {
    c.is_ascii_alphabetic() || matches!(c, '\u{00C0}'..='\u{024F}' | '\u{1E00}'..='\u{1EFF}')
}

/// A Latin letter lowercased and without its accents; letters that are not
/// a base letter plus marks (ß, æ, ø, ł, ...) spelled out in ASCII.
fn push_folded_latin(out: &mut String, c: char) {
    let spelled = match c {
        'ß' | 'ẞ' => "ss",
        'æ' | 'Æ' => "ae",
        'œ' | 'Œ' => "oe",
        'ø' | 'Ø' => "o",
        'đ' | 'Đ' | 'ð' | 'Ð' => "d",
        'ł' | 'Ł' => "l",
        'þ' | 'Þ' => "th",
        'ħ' | 'Ħ' => "h",
        'ı' => "i",
        'ŧ' | 'Ŧ' => "t",
        _ => "",
    };
    if !spelled.is_empty() {
        out.push_str(spelled);
        return;
    }
    let mut base = None;
    decompose_canonical(c, |part| {
        if base.is_none() && !is_combining_mark(part) {
            base = Some(part);
        }
    });
    out.extend(base.unwrap_or(c).to_lowercase());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_and_latin_accents_and_splits_on_punctuation() {
        assert_eq!(
            index_text("Café CRÈME, naïve façade; Straße e-mail: ÅNGSTRÖM!"),
            "cafe creme naive facade strasse e mail angstrom"
        );
        assert_eq!(index_text("cafe\u{301} ok"), "cafe ok");
        assert_eq!(
            index_text("Ελληνικά Привет 日本語"),
            "ελληνικά привет 日本語"
        );
        assert_eq!(
            index_text("  invoice #4821, $1,250.00  "),
            "invoice 4821 1 250 00"
        );
        assert_eq!(index_text(""), "");
        assert_eq!(index_text("!!!"), "");
    }

    #[test]
    fn queries_need_every_word_and_the_last_as_a_prefix() {
        let terms = SearchTerms::parse("  Send the INVO ").unwrap();
        assert_eq!(terms.tsquery(), "'send' & 'the' & 'invo':*");
        assert_eq!(terms.fts5(), "\"send\" AND \"the\" AND \"invo\"*");
        assert!(SearchTerms::parse("?!").unwrap().is_empty());
    }

    #[test]
    fn a_prefix_can_be_asked_as_the_words_it_starts() {
        let terms = SearchTerms::parse("send the INVO").unwrap();
        assert_eq!(terms.prefix(), Some("invo"));
        let words = ["invoice".to_owned(), "invoices".to_owned()];
        assert_eq!(
            terms.tsquery_with_last_as(&words).as_deref(),
            Some("'send' & 'the' & ('invoice' | 'invoices')")
        );
        // No word starts with it: nothing can match.
        assert_eq!(terms.tsquery_with_last_as(&[]), None);
        // Words the index took from older rows are quoted safely.
        let odd = ["it's".to_owned(), "a\\b".to_owned()];
        assert_eq!(
            SearchTerms::parse("xy")
                .unwrap()
                .tsquery_with_last_as(&odd)
                .as_deref(),
            Some("('it''s' | 'a\\\\b')")
        );
    }

    #[test]
    fn member_marks_are_a_tilde_and_sixteen_hex_digits() {
        // SHA-256("reader") starts 3d0941964aa3ebdc.
        assert_eq!(member_mark("reader"), "~3d0941964aa3ebdc");
        assert_ne!(member_mark("reader"), member_mark("reader2"));
        // No indexed word can be a mark.
        assert!(!index_text("~3d0941964aa3ebdc").starts_with('~'));
    }

    #[test]
    fn queries_are_two_to_two_hundred_characters_after_trimming() {
        assert!(SearchTerms::parse(" a ").is_err());
        assert!(SearchTerms::parse("").is_err());
        assert!(SearchTerms::parse(&"é".repeat(200)).is_ok());
        assert!(SearchTerms::parse(&"é".repeat(201)).is_err());
        assert!(SearchTerms::parse("ab").is_ok());
    }
}
