//! Phone numbers, written in digits, in words ("five five five"), or a mix,
//! and split by spaces, dots, dashes, slashes or brackets.
//!
//! Chat is full of long numbers that are not phone numbers: amounts, dates,
//! order and ticket ids, versions, timestamps, quantities. A regular
//! expression cannot tell them apart, so this is a small scanner: it reads
//! runs of digits and number words joined only by separators, then judges
//! each run by its shape (grouping, leading `+`, dates, IP addresses,
//! thousands separators) and by the words around it ("call me", "order",
//! "lines", "$").

use std::ops::Range;

/// At most this many digits fit a phone number (E.164 allows 15).
const MAX_DIGITS: usize = 15;
/// Fewer digits than this is a short code, an amount or a year.
const MIN_DIGITS: usize = 7;

/// Finds phone numbers in a folded view and returns their byte ranges in it.
pub(crate) fn find(text: &str, out: &mut Vec<Range<usize>>) {
    let bytes = text.as_bytes();
    let mut run = Run::default();
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte.is_ascii_digit() {
            run.push(index, index + 1, &[byte - b'0'], false, bytes);
            index += 1;
        } else if byte.is_ascii_alphabetic() {
            let end = index
                + bytes[index..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphabetic())
                    .count();
            let word = &bytes[index..end];
            let glued_to_digit = (index > 0 && bytes[index - 1].is_ascii_digit())
                || bytes.get(end).is_some_and(u8::is_ascii_digit);
            match number_word(word, glued_to_digit) {
                Some(Word::Digits(digits)) => run.push(index, end, digits, true, bytes),
                Some(Word::Repeat(times)) => {
                    run.repeat = times;
                    if run.count > 0 {
                        run.last_end = end;
                    }
                }
                None => run.close(text, out),
            }
            index = end;
        } else if is_separator(byte) && index - run.last_end < 4 {
            index += 1;
        } else {
            run.close(text, out);
            index += 1;
        }
    }
    run.close(text, out);
}

fn is_separator(byte: u8) -> bool {
    matches!(byte, b' ' | b'.' | b'-' | b'(' | b')' | b'/' | b',')
}

enum Word {
    Digits(&'static [u8]),
    Repeat(usize),
}

fn number_word(word: &[u8], glued_to_digit: bool) -> Option<Word> {
    const ZEROS: [u8; 8] = [0; 8];
    let digits: &'static [u8] = match word {
        b"zero" | b"oh" | b"o" => &[0],
        b"one" => &[1],
        b"two" => &[2],
        b"three" => &[3],
        b"four" => &[4],
        b"five" => &[5],
        b"six" => &[6],
        b"seven" => &[7],
        b"eight" => &[8],
        b"nine" => &[9],
        // Spanish, Portuguese, German and French, leaving out words that are
        // English too ("un", "um", "sept").
        b"cero" | b"null" => &[0],
        b"uno" | b"eins" => &[1],
        b"dos" | b"dois" | b"zwei" | b"deux" => &[2],
        b"tres" | b"drei" | b"trois" => &[3],
        b"cuatro" | b"quatro" | b"vier" | b"quatre" => &[4],
        b"cinco" | b"funf" | b"cinq" => &[5],
        b"seis" | b"sechs" => &[6],
        b"siete" | b"sete" | b"sieben" => &[7],
        b"ocho" | b"oito" | b"acht" | b"huit" => &[8],
        b"nueve" | b"nove" | b"neun" | b"neuf" => &[9],
        b"double" => return Some(Word::Repeat(2)),
        b"triple" => return Some(Word::Repeat(3)),
        // "O1OO": letter o standing for zero next to digits.
        _ if glued_to_digit && word.len() <= ZEROS.len() && word.iter().all(|&b| b == b'o') => {
            &ZEROS[..word.len()]
        }
        _ => return None,
    };
    Some(Word::Digits(digits))
}

/// A run of digits and number words joined only by separators.
#[derive(Default)]
struct Run {
    start: usize,
    /// End of the last unit, or 0 when the run is empty.
    last_end: usize,
    digits: [u8; 24],
    count: usize,
    /// Lengths of the digit groups, split wherever a separator stands.
    chunks: [u8; 16],
    chunk_count: usize,
    spelled: bool,
    repeat: usize,
}

impl Run {
    fn push(&mut self, start: usize, end: usize, digits: &[u8], spelled: bool, bytes: &[u8]) {
        if self.count == 0 {
            self.start = start;
            self.chunk_count = 0;
        }
        let adjacent = self.count > 0 && start == self.last_end;
        let times = std::mem::replace(&mut self.repeat, 1).max(1);
        for _ in 0..times {
            for &digit in digits {
                if self.count < self.digits.len() {
                    self.digits[self.count] = digit;
                }
                self.count += 1;
            }
        }
        let added = (digits.len() * times) as u8;
        if adjacent && !spelled && self.chunk_count > 0 && bytes[start - 1].is_ascii_digit() {
            self.chunks[self.chunk_count - 1] += added;
        } else if self.chunk_count < self.chunks.len() {
            self.chunks[self.chunk_count] = added;
            self.chunk_count += 1;
        }
        self.spelled |= spelled;
        self.last_end = end;
    }

    fn close(&mut self, text: &str, out: &mut Vec<Range<usize>>) {
        if self.count > 0
            && let Some(range) = judge(self, text)
        {
            out.push(range);
        }
        *self = Run {
            last_end: 0,
            ..Run::default()
        };
    }
}

/// Decides whether a run is a phone number; returns its range if so.
fn judge(run: &Run, text: &str) -> Option<Range<usize>> {
    if run.count < MIN_DIGITS || run.count > MAX_DIGITS {
        return None;
    }
    let bytes = text.as_bytes();
    let (start, end) = (run.start, run.last_end);
    let raw = &bytes[start..end];
    let digits = &run.digits[..run.count.min(run.digits.len())];
    let chunks = &run.chunks[..run.chunk_count];
    let plus = start > 0 && bytes[start - 1] == b'+';
    let paren = raw.contains(&b'(') || (start > 0 && bytes[start - 1] == b'(');

    if glued(bytes, start, end) || next_non_space(bytes, end) == Some(b'%') {
        return None;
    }
    if !run.spelled && raw.contains(&b',') {
        // "12, 15, 18, 21", "1,234,567.89", "40.7128, -74.0060".
        return None;
    }
    if money_before(bytes, start) || unit_after(&text[end..]) {
        return None;
    }
    if id_before(&text[..start]) {
        return None;
    }
    if !plus && (looks_like_date(chunks, digits) || looks_like_ip(raw, chunks, digits)) {
        return None;
    }
    if !run.spelled && !plus && year_then_serial(chunks, digits, raw) {
        return None;
    }
    // One decimal point and nothing else: "1234567.891".
    if !run.spelled
        && !plus
        && chunks.len() == 2
        && raw.iter().filter(|b| !b.is_ascii_digit()).eq([&b'.'])
    {
        return None;
    }
    let context = phone_context(&text[start.saturating_sub(48)..start])
        || phone_context(after(text, end, 28));
    if !plus && !context && looks_like_thousands(chunks, raw) {
        return None;
    }
    if !context && counting(digits) {
        return None;
    }
    let range_start = if plus { start - 1 } else { start };
    let leading_zero = digits.first() == Some(&0);
    let grouped = chunks.len() >= 2;
    let accept = run.spelled
        || plus
        || paren
        || context
        || (10..=13).contains(&run.count)
        || (leading_zero && grouped);
    accept.then_some(range_start..end)
}

fn after(text: &str, end: usize, len: usize) -> &str {
    let mut stop = (end + len).min(text.len());
    while !text.is_char_boundary(stop) {
        stop -= 1;
    }
    &text[end..stop]
}

/// Digits stuck to letters are codes, not numbers: "a716-4466...",
/// "1Z999AA1012...", "ORD-2024-00017", "1.4.0-beta", "0x8007".
fn glued(bytes: &[u8], start: usize, end: usize) -> bool {
    let word_byte = |b: u8| b.is_ascii_alphabetic() || b == b'_';
    let before = |i: usize| (i > 0).then(|| bytes[i - 1]);
    let first_is_digit = bytes[start].is_ascii_digit();
    let last_is_digit = bytes[end - 1].is_ascii_digit();
    let glued_before = first_is_digit
        && match before(start) {
            Some(b) if word_byte(b) => true,
            Some(b'-') => before(start - 1).is_some_and(|b| b.is_ascii_alphanumeric()),
            _ => false,
        };
    let glued_after = last_is_digit
        && match bytes.get(end) {
            Some(&b) if word_byte(b) => true,
            Some(b'-') => bytes.get(end + 1).is_some_and(u8::is_ascii_alphabetic),
            _ => false,
        };
    glued_before || glued_after
}

fn next_non_space(bytes: &[u8], from: usize) -> Option<u8> {
    bytes[from..].iter().copied().find(|&b| b != b' ')
}

fn money_before(bytes: &[u8], start: usize) -> bool {
    let before = bytes[..start].trim_ascii_end();
    before.ends_with(b"$")
        || before.ends_with("€".as_bytes())
        || before.ends_with("£".as_bytes())
        || before.ends_with("¥".as_bytes())
        || before.ends_with("₹".as_bytes())
}

/// Words after a number that make it an amount or a quantity.
fn unit_after(rest: &str) -> bool {
    const UNITS: &[&str] = &[
        "usd",
        "eur",
        "gbp",
        "chf",
        "pln",
        "dollars",
        "dollar",
        "euro",
        "euros",
        "bucks",
        "k",
        "m",
        "bn",
        "million",
        "billion",
        "lines",
        "line",
        "rows",
        "words",
        "users",
        "pixels",
        "px",
        "views",
        "impressions",
        "downloads",
        "records",
        "items",
        "units",
        "bytes",
        "kb",
        "mb",
        "gb",
        "tb",
        "ms",
        "seconds",
        "sec",
        "minutes",
        "min",
        "hours",
        "days",
        "miles",
        "km",
        "people",
        "visitors",
        "followers",
        "times",
        "steps",
        "characters",
        "chars",
        "tokens",
        "requests",
        "messages",
        "pages",
        "copies",
        "orders",
        "transactions",
        "clicks",
        "visits",
        "subscribers",
        "members",
        "customers",
        "results",
        "entries",
        "points",
        "votes",
        "€",
        "$",
        "£",
        "%",
        "x",
        "per",
    ];
    let word = first_word(rest);
    !word.is_empty() && UNITS.contains(&word)
}

fn first_word(text: &str) -> &str {
    let text = text.trim_start_matches([' ', ')']);
    let end = text
        .char_indices()
        .find(|&(_, c)| c == ' ' || c == ',' || c == '.' || c == '!' || c == '?' || c == ';')
        .map_or(text.len(), |(i, _)| i);
    &text[..end]
}

/// The one or two words before a number name an id: "order #", "job",
/// "invoice", "ticket", "id =", "timestamp", "created_at:".
fn id_before(before: &str) -> bool {
    const IDS: &[&str] = &[
        "order",
        "ord",
        "job",
        "invoice",
        "inv",
        "ticket",
        "ref",
        "reference",
        "id",
        "ids",
        "sku",
        "isbn",
        "ean",
        "upc",
        "tracking",
        "batch",
        "build",
        "version",
        "ver",
        "release",
        "project",
        "case",
        "commit",
        "timestamp",
        "ts",
        "epoch",
        "serial",
        "model",
        "po",
        "item",
        "transaction",
        "txn",
        "acct",
        "iban",
        "code",
        "pin",
        "otp",
        "zip",
        "postcode",
        "contract",
        "milestone",
        "task",
        "issue",
        "pr",
        "row",
        "user_id",
        "uid",
        "account",
    ];
    if before.trim_end().ends_with('#') {
        return true;
    }
    let mut words = before
        .rsplit(' ')
        .map(|w| w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_'))
        .filter(|w| !w.is_empty());
    for word in words.by_ref().take(2) {
        if word.contains('_') || IDS.contains(&word) {
            return true;
        }
    }
    false
}

/// Words near a number that say it is one to call or text.
fn phone_context(window: &str) -> bool {
    const WORDS: &[&str] = &[
        "phone",
        "number",
        "numbr",
        "num",
        "no",
        "nr",
        "tel",
        "cell",
        "cel",
        "mobile",
        "mob",
        "call",
        "text",
        "txt",
        "sms",
        "ring",
        "reach",
        "whatsapp",
        "viber",
        "signal",
        "telegram",
        "contact",
        "digits",
        "ph",
        "dial",
        "cellphone",
        "landline",
        "mob",
        "number's",
        "hotline",
        "nummer",
        "numero",
        "telefono",
        "telefone",
        "handy",
        "celular",
        "movil",
        "zap",
        "tlf",
    ];
    if window.contains('📞') || window.contains('☎') || window.contains('📱') {
        return true;
    }
    window
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '\''))
        .any(|word| WORDS.contains(&word))
}

fn value(digits: &[u8]) -> u32 {
    digits.iter().fold(0, |acc, &d| acc * 10 + u32::from(d))
}

/// Year-month-day or day-month-year among the leading groups, or an
/// eight-digit yyyymmdd group: "2026-12-01", "12/01/2026", "20261201.3".
fn looks_like_date(chunks: &[u8], digits: &[u8]) -> bool {
    let mut offset = 0;
    for (i, &len) in chunks.iter().enumerate() {
        let len = len as usize;
        if offset + len > digits.len() {
            return false;
        }
        let group = &digits[offset..offset + len];
        if len == 8 && is_year(value(&group[..4])) && (1..=12).contains(&value(&group[4..6])) {
            return true;
        }
        if i + 2 < chunks.len() {
            let (a, b, c) = (len, chunks[i + 1] as usize, chunks[i + 2] as usize);
            if offset + a + b + c <= digits.len() {
                let first = value(group);
                let second = value(&digits[offset + a..offset + a + b]);
                let third = value(&digits[offset + a + b..offset + a + b + c]);
                let ymd =
                    a == 4 && b <= 2 && c <= 2 && is_year(first) && second <= 12 && third <= 31;
                let dmy =
                    a <= 2 && b <= 2 && c == 4 && is_year(third) && first <= 31 && second <= 31;
                if ymd || dmy {
                    return true;
                }
            }
        }
        offset += len;
    }
    false
}

fn is_year(value: u32) -> bool {
    (1900..=2099).contains(&value)
}

/// Four dotted groups of at most three digits, each at most 255.
fn looks_like_ip(raw: &[u8], chunks: &[u8], digits: &[u8]) -> bool {
    if chunks.len() != 4 || raw.contains(&b' ') || !raw.contains(&b'.') {
        return false;
    }
    let mut offset = 0;
    chunks.iter().all(|&len| {
        let len = len as usize;
        let ok = len <= 3 && value(&digits[offset..offset + len]) <= 255;
        offset += len;
        ok
    })
}

/// "2026-0042", "2019-2026": a year, a dash, and a serial or another year.
fn year_then_serial(chunks: &[u8], digits: &[u8], raw: &[u8]) -> bool {
    chunks.first() == Some(&4)
        && is_year(value(&digits[..4]))
        && matches!(raw.get(4), Some(b'-' | b'/'))
        && chunks.len() <= 2
}

/// "2 500 000", "1.250.000": a group of one to three digits followed only
/// by groups of exactly three, or a decimal tail of two.
fn looks_like_thousands(chunks: &[u8], raw: &[u8]) -> bool {
    if chunks.len() < 2 || !(1..=3).contains(&chunks[0]) {
        return false;
    }
    let mut rest = &chunks[1..];
    if let Some((&last, init)) = rest.split_last()
        && last == 2
        && raw.len() > 3
        && raw[raw.len() - 3] == b'.'
    {
        rest = init;
    }
    !rest.is_empty() && rest.iter().all(|&len| len == 3)
}

/// 1234567 or "one, two, three, ... seven": counting, not a number.
fn counting(digits: &[u8]) -> bool {
    digits.windows(2).all(|w| w[1] == w[0] + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phones(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        find(text, &mut out);
        out.into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn finds_written_and_spelled_numbers() {
        assert_eq!(phones("call 555-123-4567 now"), ["555-123-4567"]);
        assert_eq!(phones("+44 7700 900123"), ["+44 7700 900123"]);
        assert_eq!(
            phones("five five five one two three four"),
            ["five five five one two three four"]
        );
        assert_eq!(
            phones("my cell: 5five5 123 4five67"),
            ["5five5 123 4five67"]
        );
        assert_eq!(
            phones("zero seven seven double zero nine zero zero"),
            ["zero seven seven double zero nine zero zero"]
        );
        assert_eq!(phones("+1 212 555 o1oo"), ["+1 212 555 o1oo"]);
    }

    #[test]
    fn ignores_numbers_that_are_not_phones() {
        for text in [
            "the total is $1,250,000.00",
            "deadline 2026-12-01 or 12/01/2026",
            "order #100234567",
            "job 4821345 is done",
            "the file has 1500000 lines",
            "server 192.168.1.100",
            "v2.3.1 and 1.4.0-beta",
            "2 500 000 users",
            "id 550e8400-e29b-41d4-a716-446655440000",
            "one, two, three, four, five, six, seven",
            "invoice number format 2026-0042",
        ] {
            assert!(phones(text).is_empty(), "{text}: {:?}", phones(text));
        }
    }
}
