//! Finds contact details in chat messages, so a marketplace can flag, mask
//! or refuse messages that would move a deal off the platform.
//!
//! Parties who want to skip the platform's fee rarely write their address
//! plainly, because they expect a filter. So the detector looks for the four
//! kinds of contact detail both as written and as people disguise them:
//!
//! - **e-mail**: `maria@gmail.com`, `john at gmail dot com`,
//!   `john(at)gmail(dot)com`, `j o h n @ g m a i l . c o m`, fullwidth or
//!   Cyrillic look-alike letters, `gmail: bobbydesigns88`;
//! - **phone**: digits in any grouping (`+1 (415) 555-0198`,
//!   `5 5 5 . 2 3 4 . 9 9 8 8`), spelled out or mixed (`five five five one
//!   two…`, `5five5 123 4five67`, `double zero`), the letter O for zero,
//!   keycap emoji;
//! - **link**: `https://…`, `hxxps://…`, `www.…`, bare domains
//!   (`brightpixel.agency`, `t.me/jdev`, `wa.me/…`, `paypal.me/…`) and
//!   disguised ones (`mysite dot com`, `janedoe[.]design`, `johndev,com`);
//! - **handle**: accounts on messaging and payment apps (WhatsApp,
//!   Telegram, Signal, Skype, WeChat, Discord, Instagram, Snapchat, Venmo,
//!   Cash App, PayPal, Zelle, Revolut, Wise, …) given with an identifier
//!   (`discord: jdev_pro`, `venmo @john-smith`, `$annak on cash app`), an
//!   invitation (`hit me up on whats app`, `let's move this to Signal`,
//!   `pay me via zelle`) or a disguised app name (`w h a t s a p p`,
//!   `t.e.l.e.g.r.a.m`, `wh4tsapp`).
//!
//! What a naive detector flags and this one leaves alone: prices and
//! amounts (`$1,250.00`, `1 250 EUR`, `300k`), dates and times, version
//! numbers, order, job, invoice and ticket ids, IP addresses, timestamps,
//! quantities (`1500000 lines`), file names (`report.pdf`, `app.py`),
//! technology names (`Node.js`, `ASP.NET`), and chat about building
//! integrations with those apps ("the Telegram bot", "a PayPal checkout").
//!
//! How: the message is folded once into a plain lowercase spelling that
//! remembers where each byte came from (look-alikes mapped, invisible
//! characters dropped, letters spelled apart closed up), then regular
//! expressions and a small phone-number scanner run over it, and every
//! finding is mapped back to a byte range of the original text. No network,
//! no model: everything is compiled once in [`ContactDetector::new`] and a
//! detector is shared between threads.
//!
//! ```
//! use contact_guard::{ContactDetector, ContactKind, kinds, mask};
//!
//! let detector = ContactDetector::new();
//! let text = "great, mail me at john at gmail dot com or call 555-123-4567";
//! let findings = detector.detect(text);
//! assert_eq!(kinds(&findings), [ContactKind::Email, ContactKind::Phone]);
//! assert_eq!(
//!     mask(text, &findings),
//!     "great, mail me at [contact hidden] or call [contact hidden]"
//! );
//! ```

mod email;
mod handle;
mod link;
mod patterns;
mod phone;
mod view;

use std::ops::Range;

/// The kinds of contact detail, spelled as on the wire (`"email"`,
/// `"phone"`, `"link"`, `"handle"`); ordered as [`kinds`] lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ContactKind {
    /// An e-mail address, plain or disguised.
    Email,
    /// A phone number in digits, words or both.
    Phone,
    /// A URL, a `www.` address or a domain name.
    Link,
    /// An account on a messaging or payment app, or an invitation to one.
    Handle,
}

impl ContactKind {
    /// The wire spelling: `"email"`, `"phone"`, `"link"` or `"handle"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ContactKind::Email => "email",
            ContactKind::Phone => "phone",
            ContactKind::Link => "link",
            ContactKind::Handle => "handle",
        }
    }

    /// When two findings overlap, the merged one takes the kind that says
    /// most: an address inside a link is an e-mail, a number inside
    /// `wa.me/…` is a link.
    fn precedence(self) -> u8 {
        match self {
            ContactKind::Email => 3,
            ContactKind::Link => 2,
            ContactKind::Phone => 1,
            ContactKind::Handle => 0,
        }
    }
}

/// One contact detail found in a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Finding {
    /// What kind of contact detail it is.
    pub kind: ContactKind,
    /// Byte range in the original text, on character boundaries.
    pub range: Range<usize>,
}

/// The contact detector: its rules compiled once, then shared (it is `Send
/// + Sync`; wrap it in an `Arc`) and run on every message.
#[derive(Debug)]
pub struct ContactDetector {
    email: email::EmailRules,
    link: link::LinkRules,
    handle: handle::HandleRules,
}

impl Default for ContactDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl ContactDetector {
    /// Compiles the rules (a few milliseconds; do it once at startup).
    pub fn new() -> Self {
        ContactDetector {
            email: email::EmailRules::new(),
            link: link::LinkRules::new(),
            handle: handle::HandleRules::new(),
        }
    }

    /// Finds the contact details in `text`: sorted by start, overlapping
    /// findings merged, ranges on character boundaries of `text`.
    ///
    /// Only the first 4 GiB of a text are looked at (offsets are kept in 32
    /// bits); chat messages are far shorter.
    pub fn detect(&self, text: &str) -> Vec<Finding> {
        let text = within_u32(text);
        if text.is_empty() {
            return Vec::new();
        }
        let folded = view::fold(text);
        let closed = view::close_up(&folded);
        let view = closed.as_ref().unwrap_or(&folded);
        let folded_text = view.text.as_str();

        let mut phones = Vec::new();
        phone::find(folded_text, &mut phones);
        let mut emails = Vec::new();
        let uppercase_at =
            |r: Range<usize>| r.start < r.end && &text[view.original_range(r)] == "AT";
        self.email.find(folded_text, uppercase_at, &mut emails);
        let mut links = Vec::new();
        self.link.find(folded_text, &mut links);
        let mut handles = Vec::new();
        let disguised = |r: Range<usize>| is_disguised(&text[view.original_range(r)]);
        self.handle
            .find(folded_text, &phones, disguised, &mut handles);

        let mut findings: Vec<Finding> = Vec::new();
        for (kind, ranges) in [
            (ContactKind::Email, emails),
            (ContactKind::Phone, phones),
            (ContactKind::Link, links),
            (ContactKind::Handle, handles),
        ] {
            for range in ranges {
                if let Some(range) = trim(folded_text, range) {
                    findings.push(Finding {
                        kind,
                        range: view.original_range(range),
                    });
                }
            }
        }
        merge(findings)
    }
}

/// The longest prefix of `text` whose offsets fit in 32 bits.
fn within_u32(text: &str) -> &str {
    let mut end = text.len().min(u32::MAX as usize);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// An app name written so a filter would miss it: digits or symbols for
/// letters, letters spaced or dotted apart, look-alike characters.
fn is_disguised(original: &str) -> bool {
    let odd = original
        .chars()
        .filter(|&c| !(c.is_ascii_alphabetic() || c == ' ' || c == '\'' || c == '-'))
        .count();
    let spaces = original.matches(' ').count();
    odd > 0 || spaces >= 2
}

/// Drops spaces and trailing punctuation a pattern took along.
fn trim(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let slice = &text[range.clone()];
    let leading = slice.len() - slice.trim_start_matches(' ').len();
    let kept = slice
        .trim_start_matches(' ')
        .trim_end_matches([' ', '.', ',', '!', '?', ';', ':', ')', '(']);
    let start = range.start + leading;
    let end = start + kept.len();
    (start < end).then_some(start..end)
}

/// Sorts findings and merges the overlapping ones.
fn merge(mut findings: Vec<Finding>) -> Vec<Finding> {
    findings.sort_by_key(|f| (f.range.start, std::cmp::Reverse(f.range.end)));
    let mut merged: Vec<Finding> = Vec::with_capacity(findings.len());
    for finding in findings {
        match merged.last_mut() {
            Some(last) if finding.range.start < last.range.end => {
                last.range.end = last.range.end.max(finding.range.end);
                // "skype: john.smith.dev" is a handle that looks like a
                // domain: the app named first decides.
                let handle_first =
                    last.kind == ContactKind::Handle && finding.kind == ContactKind::Link;
                if finding.kind.precedence() > last.kind.precedence() && !handle_first {
                    last.kind = finding.kind;
                }
            }
            _ => merged.push(finding),
        }
    }
    merged
}

/// What a finding is replaced with by [`mask`].
pub const MASK: &str = "[contact hidden]";

/// Replaces each finding in `text` with `[contact hidden]`. Findings are
/// taken in order of start; one that overlaps an earlier one only extends
/// it, and ranges past the end or off character boundaries are ignored.
pub fn mask(text: &str, findings: &[Finding]) -> String {
    let mut ranges: Vec<Range<usize>> = findings
        .iter()
        .map(|f| f.range.clone())
        .filter(|r| {
            r.start < r.end
                && r.end <= text.len()
                && text.is_char_boundary(r.start)
                && text.is_char_boundary(r.end)
        })
        .collect();
    ranges.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(text.len());
    let mut cursor = 0;
    for range in ranges {
        if range.end <= cursor {
            continue;
        }
        if range.start >= cursor {
            out.push_str(&text[cursor..range.start]);
            out.push_str(MASK);
        }
        cursor = range.end;
    }
    out.push_str(&text[cursor..]);
    out
}

/// The kinds present in `findings`, each once, in the order email, phone,
/// link, handle.
pub fn kinds(findings: &[Finding]) -> Vec<ContactKind> {
    let mut kinds: Vec<ContactKind> = findings.iter().map(|f| f.kind).collect();
    kinds.sort();
    kinds.dedup();
    kinds
}
