//! Normalised views of a message, each byte remembering where it came from.
//!
//! People hide contact details by making them look unlike themselves:
//! fullwidth or Cyrillic letters, zero-width joiners, keycap emoji, letters
//! spaced or dotted apart. The rules are easier to write (and much faster to
//! run) against one plain, lowercase, ASCII-leaning spelling of the text, so
//! the text is first folded into such a view. Every byte of a view carries
//! the byte range of the original character it came from, so a match in the
//! view maps back to a range of the original text on character boundaries.

use std::ops::Range;

/// A rewritten copy of a message plus, for every byte of it, the range of
/// the original character that produced it.
#[derive(Debug, Default, Clone)]
pub(crate) struct View {
    /// The rewritten text.
    pub(crate) text: String,
    /// Start offset in the original of the character behind each byte.
    starts: Vec<u32>,
    /// End offset in the original of the character behind each byte.
    ends: Vec<u32>,
}

impl View {
    /// Maps a non-empty byte range of this view to the range of the
    /// original text it was made from.
    pub(crate) fn original_range(&self, range: Range<usize>) -> Range<usize> {
        debug_assert!(range.start < range.end && range.end <= self.text.len());
        self.starts[range.start] as usize..self.ends[range.end - 1] as usize
    }

    fn push_byte(&mut self, byte: u8, start: usize, end: usize) {
        // Every byte pushed alone is ASCII, so the text stays valid UTF-8.
        debug_assert!(byte.is_ascii());
        self.text.push(byte as char);
        self.starts.push(start as u32);
        self.ends.push(end as u32);
    }

    fn push_char(&mut self, c: char, start: usize, end: usize) {
        self.text.push(c);
        for _ in 0..c.len_utf8() {
            self.starts.push(start as u32);
            self.ends.push(end as u32);
        }
    }
}

/// Folds a message into its plain spelling: lowercase, look-alike letters
/// and digits mapped to ASCII, invisible characters dropped, every run of
/// whitespace turned into one space, dash-, dot- and at-like signs turned
/// into `-`, `.` and `@`.
pub(crate) fn fold(original: &str) -> View {
    let mut view = View {
        text: String::with_capacity(original.len()),
        starts: Vec::with_capacity(original.len()),
        ends: Vec::with_capacity(original.len()),
    };
    for (start, c) in original.char_indices() {
        let end = start + c.len_utf8();
        match fold_char(c) {
            Folded::Drop => {}
            Folded::Ascii(b' ') => {
                if !view.text.ends_with(' ') {
                    view.push_byte(b' ', start, end);
                }
            }
            Folded::Ascii(byte) => view.push_byte(byte, start, end),
            Folded::Keep(kept) => view.push_char(kept, start, end),
        }
    }
    view
}

/// What one character of the original becomes in the folded view.
enum Folded {
    /// Invisible: zero-width characters, variation selectors, keycaps.
    Drop,
    /// An ASCII byte (already lowercase).
    Ascii(u8),
    /// A character with no plain spelling, kept (lowercased) as it is.
    Keep(char),
}

fn fold_char(c: char) -> Folded {
    if c.is_ascii() {
        let byte = c as u8;
        return if byte.is_ascii_whitespace() {
            Folded::Ascii(b' ')
        } else {
            Folded::Ascii(byte.to_ascii_lowercase())
        };
    }
    let code = c as u32;
    match code {
        // Zero-width spaces and joiners, direction marks, word joiner, BOM,
        // soft hyphen, variation selectors (emoji presentation), keycap.
        0x200B..=0x200F | 0x2060..=0x2064 | 0xFEFF | 0x00AD | 0xFE00..=0xFE0F | 0x20E3 | 0x180E => {
            Folded::Drop
        }
        // Fullwidth ASCII, common in "ｊｏｈｎ＠ｇｍａｉｌ．ｃｏｍ".
        0xFF01..=0xFF5E => Folded::Ascii(((code - 0xFEE0) as u8).to_ascii_lowercase()),
        // Mathematical bold/italic/script/... letters: 52 per style.
        0x1D400..=0x1D6A3 => {
            let index = ((code - 0x1D400) % 52) as u8;
            Folded::Ascii(if index < 26 {
                b'a' + index
            } else {
                b'a' + index - 26
            })
        }
        // Mathematical digits: 10 per style.
        0x1D7CE..=0x1D7FF => Folded::Ascii(b'0' + ((code - 0x1D7CE) % 10) as u8),
        // Circled letters and digits.
        0x24B6..=0x24CF => Folded::Ascii(b'a' + (code - 0x24B6) as u8),
        0x24D0..=0x24E9 => Folded::Ascii(b'a' + (code - 0x24D0) as u8),
        0x2460..=0x2468 => Folded::Ascii(b'1' + (code - 0x2460) as u8),
        0x24EA => Folded::Ascii(b'0'),
        // Arabic-Indic, Persian and Devanagari digits.
        0x0660..=0x0669 => Folded::Ascii(b'0' + (code - 0x0660) as u8),
        0x06F0..=0x06F9 => Folded::Ascii(b'0' + (code - 0x06F0) as u8),
        0x0966..=0x096F => Folded::Ascii(b'0' + (code - 0x0966) as u8),
        // Regional indicator letters (the halves of flag emoji).
        0x1F1E6..=0x1F1FF => Folded::Ascii(b'a' + (code - 0x1F1E6) as u8),
        _ => match confusable(c) {
            Some(byte) => Folded::Ascii(byte),
            None if c.is_whitespace() => Folded::Ascii(b' '),
            None => {
                let mut lower = c.to_lowercase();
                match (lower.next(), lower.next()) {
                    (Some(single), None) => Folded::Keep(single),
                    _ => Folded::Keep(c),
                }
            }
        },
    }
}

/// Non-ASCII characters that stand in for an ASCII one in disguised
/// contact details: Cyrillic and Greek look-alikes, small capitals, Latin
/// letters with accents, and dash-, dot-, at- and quote-like signs.
fn confusable(c: char) -> Option<u8> {
    let byte = match c {
        'а' | 'А' | 'α' | 'Α' | 'ᴀ' | 'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'À' | 'Á' | 'Â' | 'Ã'
        | 'Ä' | 'Å' => b'a',
        'В' | 'Β' | 'ʙ' | 'ь' => b'b',
        'с' | 'С' | 'ᴄ' | 'ç' | 'Ç' => b'c',
        'ԁ' | 'ᴅ' => b'd',
        'е' | 'Е' | 'ё' | 'Ё' | 'ε' | 'Ε' | 'ᴇ' | 'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' => {
            b'e'
        }
        'ꜰ' => b'f',
        'ɡ' | 'ɢ' => b'g',
        'һ' | 'Н' | 'Η' | 'ʜ' => b'h',
        'і' | 'І' | 'ї' | 'ι' | 'Ι' | 'ɪ' | 'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => {
            b'i'
        }
        'ј' | 'Ј' | 'ᴊ' => b'j',
        'к' | 'К' | 'κ' | 'Κ' | 'ᴋ' => b'k',
        'ӏ' | 'ʟ' => b'l',
        'м' | 'М' | 'Μ' | 'ᴍ' => b'm',
        'Ν' | 'ɴ' | 'ñ' | 'Ñ' => b'n',
        'о' | 'О' | 'ο' | 'Ο' | 'ᴏ' | 'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'Ò' | 'Ó' | 'Ô' | 'Õ'
        | 'Ö' | 'Ø' => b'o',
        'р' | 'Р' | 'ρ' | 'Ρ' | 'ᴘ' => b'p',
        'ԛ' => b'q',
        'ʀ' => b'r',
        'ѕ' | 'Ѕ' | 'ꜱ' => b's',
        'т' | 'Т' | 'τ' | 'Τ' | 'ᴛ' => b't',
        'υ' | 'ᴜ' | 'ù' | 'ú' | 'û' | 'ü' | 'Ù' | 'Ú' | 'Û' | 'Ü' => b'u',
        'ν' | 'ᴠ' => b'v',
        'ԝ' | 'ᴡ' => b'w',
        'х' | 'Х' | 'χ' | 'Χ' => b'x',
        'у' | 'У' | 'Υ' | 'ʏ' | 'ý' | 'ÿ' | 'Ý' => b'y',
        'Ζ' | 'ᴢ' => b'z',
        '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{FE58}' | '\u{FE63}' => b'-',
        '\u{00B7}' | '\u{2022}' | '\u{2024}' | '\u{2027}' | '\u{2219}' | '\u{22C5}'
        | '\u{30FB}' | '\u{FF65}' | '\u{3002}' | '\u{FF61}' | '\u{2E31}' => b'.',
        '\u{FE6B}' => b'@',
        '\u{2018}' | '\u{2019}' | '\u{02BC}' => b'\'',
        '\u{3000}' => b' ',
        // Chinese numerals, used to spell phone numbers past filters.
        '〇' | '零' => b'0',
        '一' => b'1',
        '二' => b'2',
        '三' => b'3',
        '四' => b'4',
        '五' => b'5',
        '六' => b'6',
        '七' => b'7',
        '八' => b'8',
        '九' => b'9',
        _ => return None,
    };
    Some(byte)
}

/// Closes up letters spelled apart: "w h a t s a p p", "j o h n @ g m a i l
/// . c o m", "t.e.l.e.g.r.a.m", "k-a-t-e". Returns `None` when nothing in
/// the view is spelled apart (the common case), so callers keep the view
/// they have.
///
/// Only runs of at least three single characters with at least two letters
/// among them are closed up, so "2 - 3 days" and "e.g." stay as they are.
pub(crate) fn close_up(view: &View) -> Option<View> {
    let bytes = view.text.as_bytes();
    if !has_spelled_apart(bytes) {
        return None;
    }
    let mut skip: Vec<bool> = Vec::new();
    mark_spaced_runs(bytes, &mut skip);
    mark_dotted_letters(bytes, &mut skip);
    if skip.is_empty() {
        return None;
    }
    let mut closed = View {
        text: String::with_capacity(bytes.len()),
        starts: Vec::with_capacity(bytes.len()),
        ends: Vec::with_capacity(bytes.len()),
    };
    let text = &view.text;
    let mut index = 0;
    while index < bytes.len() {
        let width = utf8_width(bytes[index]);
        if !skip[index] {
            closed.text.push_str(&text[index..index + width]);
            closed
                .starts
                .extend_from_slice(&view.starts[index..index + width]);
            closed
                .ends
                .extend_from_slice(&view.ends[index..index + width]);
        }
        index += width;
    }
    Some(closed)
}

/// Cheap test before the real work: three lone letters or digits in a row,
/// each at most four bytes after the previous one with nothing alphanumeric
/// between ("w h a", "t.e.l", "j o h n @").
fn has_spelled_apart(bytes: &[u8]) -> bool {
    let mut chain = 0;
    let mut last_lone: Option<usize> = None;
    for (index, &byte) in bytes.iter().enumerate() {
        if !byte.is_ascii_alphanumeric() {
            continue;
        }
        let lone = (index == 0 || !bytes[index - 1].is_ascii_alphanumeric())
            && bytes
                .get(index + 1)
                .is_none_or(|b| !b.is_ascii_alphanumeric());
        if !lone {
            chain = 0;
            last_lone = None;
            continue;
        }
        chain = match last_lone {
            Some(previous) if index - previous <= 4 => chain + 1,
            _ => 1,
        };
        if chain >= 3 {
            return true;
        }
        last_lone = Some(index);
    }
    false
}

fn utf8_width(first: u8) -> usize {
    match first {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

fn mark(skip: &mut Vec<bool>, len: usize, index: usize) {
    if skip.is_empty() {
        skip.resize(len, false);
    }
    skip[index] = true;
}

/// A token that is one character spelled apart from its neighbours: one
/// ASCII letter or digit (optionally with one trailing punctuation mark, as
/// in "m," or "p?"), or one of the signs addresses are made of.
fn single_token(token: &[u8]) -> Option<u8> {
    match token {
        [c] if c.is_ascii_alphanumeric() || b"@.:/_-#".contains(c) => Some(*c),
        [c, p] if c.is_ascii_alphanumeric() && b",.!?;:)".contains(p) => Some(*c),
        [b'(', c] if c.is_ascii_alphanumeric() => Some(*c),
        _ => None,
    }
}

fn mark_spaced_runs(bytes: &[u8], skip: &mut Vec<bool>) {
    // Tokens are separated by exactly one space (fold collapsed runs).
    let mut tokens: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        if byte == b' ' {
            if index > start {
                tokens.push((start, index));
            }
            start = index + 1;
        }
    }
    if bytes.len() > start {
        tokens.push((start, bytes.len()));
    }
    let mut run_start = 0;
    while run_start < tokens.len() {
        let mut run_end = run_start;
        let (mut letters, mut alnum) = (0, 0);
        while run_end < tokens.len() {
            let (from, to) = tokens[run_end];
            match single_token(&bytes[from..to]) {
                Some(c) => {
                    letters += usize::from(c.is_ascii_alphabetic());
                    alnum += usize::from(c.is_ascii_alphanumeric());
                    run_end += 1;
                }
                None => break,
            }
        }
        // Signs at either end ("— r a c h e l") stay apart.
        let is_alnum = |&(from, to): &(usize, usize)| {
            single_token(&bytes[from..to]).is_some_and(|c| c.is_ascii_alphanumeric())
        };
        let first = tokens[run_start..run_end]
            .iter()
            .position(is_alnum)
            .map(|i| run_start + i);
        let last = tokens[run_start..run_end]
            .iter()
            .rposition(is_alnum)
            .map(|i| run_start + i);
        if let (Some(first), Some(last)) = (first, last)
            && last + 1 - first >= 3
            && letters >= 2
            && alnum >= 3
        {
            for &(_, to) in &tokens[first..last] {
                mark(skip, bytes.len(), to);
            }
        }
        run_start = run_end.max(run_start + 1);
    }
}

fn mark_dotted_letters(bytes: &[u8], skip: &mut Vec<bool>) {
    let is_sep = |b: u8| matches!(b, b'.' | b'-' | b'_' | b'*');
    let lone_letter = |i: usize| {
        bytes[i].is_ascii_alphabetic()
            && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
            && (i + 1 == bytes.len() || !bytes[i + 1].is_ascii_alphanumeric())
    };
    let mut index = 0;
    while index < bytes.len() {
        if !lone_letter(index) {
            index += 1;
            continue;
        }
        // Follow letter, separator, letter, separator, ...
        let mut letters = 1;
        let mut last = index;
        while last + 2 < bytes.len() && is_sep(bytes[last + 1]) && lone_letter(last + 2) {
            letters += 1;
            last += 2;
        }
        if letters >= 3 {
            let mut sep = index + 1;
            while sep < last {
                mark(skip, bytes.len(), sep);
                sep += 2;
            }
        }
        index = last + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folded(text: &str) -> String {
        fold(text).text
    }

    fn closed(text: &str) -> String {
        let view = fold(text);
        close_up(&view).map_or(view.text, |v| v.text)
    }

    #[test]
    fn fold_maps_look_alikes_to_ascii() {
        assert_eq!(folded("ｊｏｈｎ＠ｇｍａｉｌ．ｃｏｍ"), "john@gmail.com");
        assert_eq!(folded("ΜΑRΙΑ"), "maria");
        assert_eq!(folded("ᴛᴇʟᴇɢʀᴀᴍ"), "telegram");
        assert_eq!(folded("5\u{fe0f}\u{20e3}5\u{fe0f}\u{20e3}"), "55");
        assert_eq!(folded("a  \t b"), "a b");
        assert_eq!(folded("j\u{200c}o\u{200c}hn"), "john");
    }

    #[test]
    fn close_up_joins_letters_spelled_apart() {
        assert_eq!(closed("w h a t s a p p me"), "whatsapp me");
        assert_eq!(closed("j o h n @ g m a i l . c o m"), "john@gmail.com");
        assert_eq!(closed("t.e.l.e.g.r.a.m!"), "telegram!");
        assert_eq!(closed("k-a-t-e at x"), "kate at x");
        assert_eq!(closed("on t e l e g r a m, same"), "on telegram, same");
    }

    #[test]
    fn close_up_leaves_ordinary_text_alone() {
        assert_eq!(closed("2 - 3 days, e.g. now"), "2 - 3 days, e.g. now");
        assert_eq!(closed("5 5 5 1 2 3 4"), "5 5 5 1 2 3 4");
        assert!(close_up(&fold("a normal sentence")).is_none());
    }

    #[test]
    fn ranges_map_back_to_original_characters() {
        let original = "x ｊｏ y";
        let view = fold(original);
        assert_eq!(view.text, "x jo y");
        let r = view.original_range(2..4);
        assert_eq!(&original[r], "ｊｏ");
    }
}
