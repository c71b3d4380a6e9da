//! E-mail addresses, plain ("maria@gmail.com") or disguised: "john at gmail
//! dot com", "john(at)gmail(dot)com", "alex @ studiofox . io", "ryan_dev
//! (at) gmail", "gmail: bobbydesigns88".

use std::ops::Range;

use regex::Regex;

use crate::patterns::{B, NOT_LINKS, PROVIDERS, email_tlds};

/// The compiled e-mail rules.
#[derive(Debug)]
pub(crate) struct EmailRules {
    /// `local@domain.tld` with nothing disguised.
    plain: Regex,
    /// Any spelling of "at" and "dot", spaces allowed, known top-level domain.
    disguised: Regex,
    /// "local at provider" with no top-level domain.
    provider_only: Regex,
    /// "gmail: name" or "my gmail is name".
    provider_name: Regex,
    /// Words that say an address is being given.
    mail_context: Regex,
}

const AT: &str = r"(?: ?[\(\[\{<] ?(?:at|@|a|arroba) ?[\)\]\}>] ?|,? (?:at|arroba),? | ?@ ?)";
const DOT: &str = r"(?: ?[\(\[\{<] ?(?:dot|\.|d0t|point|punto|ponto|punkt) ?[\)\]\}>] ?|,? (?:dot|d0t|point|punto|ponto|punkt),? | ?\. ?)";
const LOCAL_WORD: &str = r"[a-z0-9][a-z0-9._%+\-]*";
const LABEL: &str = r"(?:g ?mail|[a-z0-9][a-z0-9\-]*)";

impl EmailRules {
    /// Compiles the e-mail rules (once per detector).
    pub(crate) fn new() -> Self {
        let local = format!(
            r"{LOCAL_WORD}(?:(?: (?:dot|point|punto|ponto|punkt|underscore|dash|hyphen) | ?\. ?|\(dot\)|\[dot\]){LOCAL_WORD})*"
        );
        let tlds = email_tlds();
        let build = |pattern: String| Regex::new(&pattern).expect("e-mail pattern compiles");
        EmailRules {
            plain: build(format!(
                r"{B}[a-z0-9][a-z0-9._%+\-]*@[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?)*\.[a-z]{{2,24}}{B}"
            )),
            disguised: build(format!(
                r"{B}(?P<local>{local})(?P<at>{AT})(?P<domain>{LABEL}(?:{DOT}{LABEL})*){DOT}(?:{tlds}){B}"
            )),
            provider_only: build(format!(
                r"{B}(?P<local>{local})(?P<at>{AT})(?:{PROVIDERS}){B}"
            )),
            provider_name: build(format!(
                r"{B}(?:{PROVIDERS}){B},? ?(?:address |account |id |username |user name |name )?(?:is|:|=|-|→|->) ?(?P<name>[a-z0-9][a-z0-9._\-]+)"
            )),
            mail_context: build(format!(
                r"{B}(?:e-?mail|mail|address|inbox|contact|write|reach|send|em@il|correo|adresse){B}"
            )),
        }
    }

    /// Finds addresses in `text`, a folded view; `original_at` tells
    /// whether the original behind a range of it is an uppercase "AT", a
    /// sign of a spelled-out address.
    pub(crate) fn find(
        &self,
        text: &str,
        original_at: impl Fn(Range<usize>) -> bool,
        out: &mut Vec<Range<usize>>,
    ) {
        let bytes = text.as_bytes();
        let has_at_sign = bytes.contains(&b'@');
        let has_spelled_at = text.contains("at") || text.contains("(a)") || text.contains("arroba");
        let has_provider = has_provider_word(text);
        if !has_at_sign && !has_spelled_at && !has_provider {
            return;
        }
        if has_at_sign {
            for m in self.plain.find_iter(text) {
                if !reserved(m.as_str()) {
                    out.push(m.range());
                }
            }
        }
        let context = self.mail_context.is_match(text);
        for caps in self.disguised.captures_iter(text) {
            let (all, local, at) = (&caps[0], &caps["local"], &caps["at"]);
            let domain = &caps["domain"];
            if reserved(all) {
                continue;
            }
            let spelled_at = matches!(at.trim_matches([' ', ',']), "at" | "arroba");
            let range = caps.get(0).expect("whole match").range();
            let at_range = caps.name("at").expect("at group").range();
            let accepted = !spelled_at
                || looks_like_username(local)
                || is_provider(domain)
                || context
                || original_at(trim_range(text, at_range));
            if accepted && !is_prose_before_at(local) {
                out.push(range);
            }
        }
        if !has_provider {
            return;
        }
        for caps in self.provider_only.captures_iter(text) {
            let (local, at) = (&caps["local"], &caps["at"]);
            if local.len() < 2 || is_prose_before_at(local) {
                continue;
            }
            let at_range = caps.name("at").expect("at group").range();
            if !matches!(at.trim_matches([' ', ',']), "at" | "arroba")
                || looks_like_username(local)
                || context
                || original_at(trim_range(text, at_range))
            {
                out.push(caps.get(0).expect("whole match").range());
            }
        }
        for caps in self.provider_name.captures_iter(text) {
            let whole = caps.get(0).expect("whole match");
            let name = &caps["name"];
            let mine = text[..whole.start()].trim_end().ends_with("my");
            if looks_like_username(name) || mine {
                out.push(whole.range());
            }
        }
    }
}

/// The range without the spaces and commas around it.
fn trim_range(text: &str, range: Range<usize>) -> Range<usize> {
    let slice = &text[range.clone()];
    let start = range.start + (slice.len() - slice.trim_start_matches([' ', ',']).len());
    let end = range.end - (slice.len() - slice.trim_end_matches([' ', ',']).len());
    start..end.max(start)
}

fn has_provider_word(text: &str) -> bool {
    [
        "mail", "outlook", "yahoo", "icloud", "proton", "gmx", "aol", "yandex", "zoho",
    ]
    .iter()
    .any(|p| text.contains(p))
}

fn is_provider(domain: &str) -> bool {
    let first = domain.split([' ', '.', '(', '[']).next().unwrap_or(domain);
    matches!(
        first,
        "gmail"
            | "g"
            | "googlemail"
            | "hotmail"
            | "outlook"
            | "yahoo"
            | "ymail"
            | "icloud"
            | "protonmail"
            | "proton"
            | "gmx"
            | "aol"
            | "yandex"
            | "fastmail"
            | "zoho"
            | "live"
            | "msn"
    )
}

/// Names with digits, dots, underscores or dashes are user names, not words.
fn looks_like_username(local: &str) -> bool {
    local
        .bytes()
        .any(|b| b.is_ascii_digit() || b"._-+ ".contains(&b))
}

/// "look at google.com", "meet at site.com": an everyday word before "at".
fn is_prose_before_at(local: &str) -> bool {
    matches!(
        local,
        "look"
            | "me"
            | "us"
            | "it"
            | "him"
            | "her"
            | "them"
            | "you"
            | "here"
            | "there"
            | "is"
            | "are"
            | "was"
            | "be"
            | "available"
            | "online"
            | "live"
            | "find"
            | "see"
            | "check"
            | "visit"
            | "hosted"
            | "based"
            | "work"
            | "works"
            | "working"
            | "arrive"
            | "meet"
            | "stay"
            | "login"
            | "log"
            | "sign"
            | "signed"
            | "limits"
            | "limit"
            | "im"
            | "i'm"
            | "m"
            | "s"
            | "re"
            | "ll"
            | "we"
            | "they"
            | "i"
    )
}

fn reserved(address: &str) -> bool {
    let host = address.rsplit(['@', ' ']).next().unwrap_or(address);
    NOT_LINKS
        .iter()
        .any(|r| host == *r || host.ends_with(&format!(".{r}")))
        || address.ends_with(".test")
        || address.ends_with(".invalid")
        || address.ends_with(".local")
}
