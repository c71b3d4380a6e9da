//! Links: URLs with a scheme ("https://…", "hxxps://…"), "www." addresses,
//! bare domains ("brightpixel.agency", "t.me/jdev") and disguised ones
//! ("mysite dot com", "janedoe[.]design", "annak . carrd . co",
//! "johndev,com").

use std::ops::Range;

use regex::Regex;

use crate::patterns::{B, CODE_WORDS, LINK_TLDS, NOT_LINKS, PROSE_WORDS, is_one_of};

/// The compiled link rules.
#[derive(Debug)]
pub(crate) struct LinkRules {
    scheme: Regex,
    www: Regex,
    bare: Regex,
    disguised: Regex,
    comma: Regex,
    glued_dot: Regex,
}

/// A disguised dot: "(dot)", "[.]", " dot ", " . ", " .".
const DOT: &str = r"(?: ?[\(\[\{] ?(?:dot|\.) ?[\)\]\}] ?| (?:dot|d0t) | \. ?)";
const LABEL: &str = r"[a-z0-9][a-z0-9\-]*";

impl LinkRules {
    /// Compiles the link rules (once per detector).
    pub(crate) fn new() -> Self {
        let build = |pattern: String| Regex::new(&pattern).expect("link pattern compiles");
        let path = r"(?:(?: ?/ ?| slash )[a-z0-9_\-~.%?=&#@+]+)*";
        LinkRules {
            scheme: build(format!(
                r"{B}(?:h[tx]{{2}}ps?|ftp) ?: ?/ ?/ ?[a-z0-9][^ ]*(?:(?: \. ?| ?\. )[a-z0-9][^ ]*)*"
            )),
            www: build(format!(
                r"{B}www(?:{DOT}|\.){LABEL}(?:(?:{DOT}|\.){LABEL})*(?:/[^ ]*)?"
            )),
            bare: build(format!(
                r"{B}(?P<host>[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?)*\.(?:{LINK_TLDS})){B}(?P<path>[/?#][^ ]*)?"
            )),
            disguised: build(format!(
                r"{B}(?P<first>{LABEL})(?:{DOT}{LABEL})*{DOT}(?:{LINK_TLDS}){B}{path}"
            )),
            comma: build(format!(r"{B}[a-z0-9][a-z0-9\-]{{2,}},(?:com|net|org){B}")),
            glued_dot: build(format!(
                r"{B}(?P<first>{LABEL}) ?(?:dotcom|dotnet|dotorg|d0tc0m|d0t ?c0m|dot ?c0m|d0t ?com){B}"
            )),
        }
    }

    /// Finds links in `text`, a folded view.
    pub(crate) fn find(&self, text: &str, out: &mut Vec<Range<usize>>) {
        let bytes = text.as_bytes();
        let has_dot = bytes.contains(&b'.');
        if has_dot || text.contains("//") {
            for m in self.scheme.find_iter(text) {
                out.push(m.range());
            }
        }
        if text.contains("www") {
            for m in self.www.find_iter(text) {
                out.push(m.range());
            }
        }
        if has_dot {
            for caps in self.bare.captures_iter(text) {
                let host = caps.name("host").expect("host group");
                if self.bare_is_link(text, host.range(), caps.name("path").is_some()) {
                    out.push(caps.get(0).expect("whole match").range());
                }
            }
        }
        if text.contains("dot")
            || text.contains(" .")
            || text.contains("[.]")
            || text.contains("(.)")
        {
            for caps in self.disguised.captures_iter(text) {
                let first = &caps["first"];
                if !is_one_of(first, PROSE_WORDS) {
                    out.push(caps.get(0).expect("whole match").range());
                }
            }
        }
        if ["dotcom", "dotnet", "dotorg", "d0t", "c0m"]
            .iter()
            .any(|w| text.contains(w))
        {
            for caps in self.glued_dot.captures_iter(text) {
                if !is_one_of(&caps["first"], PROSE_WORDS) {
                    out.push(caps.get(0).expect("whole match").range());
                }
            }
        }
        if bytes.contains(&b',') {
            for m in self.comma.find_iter(text) {
                out.push(m.range());
            }
        }
    }

    fn bare_is_link(&self, text: &str, host: Range<usize>, has_path: bool) -> bool {
        let bytes = text.as_bytes();
        let name = &text[host.clone()];
        if NOT_LINKS.contains(&name) {
            return false;
        }
        // Part of an e-mail address, handled there; or of a longer dotted
        // name that is not a host ("this.store.dispatch", "v1.2.io.x").
        if host.start > 0 && matches!(bytes[host.start - 1], b'@' | b'.' | b'_' | b'$' | b'-') {
            return false;
        }
        let next = bytes.get(host.end).copied();
        let after_next = bytes.get(host.end + 1).copied();
        if matches!(next, Some(b'(' | b'_' | b'=' | b'[' | b'\''))
            || (next == Some(b'.') && after_next.is_some_and(|b| b.is_ascii_alphanumeric()))
        {
            return false;
        }
        let first_label = name.split('.').next().unwrap_or(name);
        let labels = name.split('.').count();
        // Reverse-DNS identifiers of apps and packages: "com.acme.shop".
        if labels >= 3 && matches!(first_label, "com" | "org" | "net" | "io" | "dev" | "app") {
            return false;
        }
        if labels == 2 && !has_path && is_one_of(first_label, CODE_WORDS) {
            return false;
        }
        // A sentence run together: "done.me", "it.so".
        !(labels == 2 && !has_path && is_one_of(first_label, PROSE_WORDS))
    }
}
