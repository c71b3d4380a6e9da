//! Handles on messaging and payment apps, and invitations to move there:
//! "my insta is @anna.makes", "add me on telegram", "whatsapp me", "pay me
//! via zelle", "$annakdesigns on cash app", "w h a t s a p p".
//!
//! App names alone are not enough: chat about building a "Telegram bot" or
//! a "PayPal checkout" is ordinary work. A handle needs an identifier after
//! the app ("discord: jdev_pro"), or an invitation around it ("hit me up on
//! whats app", "let's move to Signal"), or a disguise of the app's name
//! (nobody spells "t.e.l.e.g.r.a.m" to talk about a bot). Without an app's
//! name, an `@name` counts when it is given as one's own ("my handle
//! everywhere is @kim") and a `$tag` in talk about paying.

use std::ops::Range;

use regex::Regex;

use crate::patterns::B;

/// Messaging apps whose names are not everyday words, with the usual
/// misspellings and digit-for-letter swaps.
const STRONG: &str = concat!(
    r"wh?[a4@]t+'?s? ?-?[a4@]+pp?|t[e3]l[e3] ?gr?[a4@]?m|[i1!|]nst[a4@]gr[a4@]m|[i1!|]nst[a4@]",
    r"|sk[yi]pe|d[i1!|]sc[o0]rd|sn[a4@]p ?ch[a4@]t|w[e3]ch[a4@]t|weixin|v[i1]b[e3]r|k[i1]k",
    r"|t[i1]k ?t[o0]k|tw[i1]tt[e3]r|f[a4]c[e3]b[o0][o0]k|l[i1]nk[e3]d ?[i1]n|imessage|threema",
    r"|line ?app|bluesky|bsky|mastodon|reddit"
);
/// Payment apps whose names are not everyday words.
const PAY: &str = concat!(
    r"v[e3]nm[o0]|c[a4@][s$5]h ?[a4@]pp?|p[a4@]y ?p[a4@]l|z[e3]ll[e3]|r[e3]v[o0]lut",
    r"|payoneer|skrill|western union|moneygram|apple ?pay|google ?pay|gpay"
);
/// Short or everyday names that count only with an identifier or an
/// invitation around them.
const WEAK: &str = r"s[i1]gn[a4]l|snap|tele|tg|ig|fb|messenger|gram|line ?id|wise|pp|threads";

/// What a handle's identifier must not be: ordinary words after "is".
const NOT_NAMES: &[&str] = &[
    "the", "a", "an", "great", "good", "fine", "down", "better", "slow", "easier", "faster", "not",
    "too", "also", "same", "ok", "okay", "there", "here", "best", "free", "blocked", "banned",
    "broken", "working", "cheaper", "safer", "easy", "bad", "weird", "it", "this", "that", "and",
    "or", "for", "with", "so", "just", "my", "your", "me",
];

/// The compiled handle rules.
#[derive(Debug)]
pub(crate) struct HandleRules {
    any_app: Regex,
    weak_exact: Regex,
    strong_exact: Regex,
    /// App, optional "id"/"handle", separator, identifier.
    named: Regex,
    /// "whatsapp me", "venmo me".
    app_me: Regex,
    /// "my telegram is", "to my paypal".
    my_app: Regex,
    /// "add me on", "hit me up on", "pay me via".
    invitation: Regex,
    /// "let's move this to", "talk on".
    move_to: Regex,
    /// "pay via", "accept payoneer", "zelle to my".
    payment: Regex,
    /// "I'm on viber", "I'm @jdev on twitter".
    presence: Regex,
    /// "$annak on cash app", "kim_draws on insta".
    tag_on: Regex,
    /// "let's use Telegram", "use whatsapp instead".
    use_app: Regex,
    /// "my handle everywhere is @kim", "@kim on all socials".
    social_at: Regex,
    /// "$kimdraws", a Cash App tag.
    cashtag: Regex,
    /// "what's your telegram?", "got whatsapp?".
    asking: Regex,
    /// "Skype? my name there is kim.designs".
    name_there: Regex,
}

impl HandleRules {
    /// Compiles the handle rules (once per detector).
    pub(crate) fn new() -> Self {
        let build = |pattern: String| Regex::new(&pattern).expect("handle pattern compiles");
        let all = format!("{STRONG}|{PAY}|{WEAK}");
        let keyword = format!(
            r"(?:(?:id|handle|username|user ?name|user|nick|number|no\.?|account|acc|tag|address){B} ?)?"
        );
        let named_keyword = format!(
            r"(?:,? ?(?P<kw>id|handle|username|user ?name|user|nick|number|no\.?|account|acc|tag|address){B} ?)?"
        );
        HandleRules {
            any_app: build(format!("{B}(?:{all}|wa|wsp|wpp|whats|zap){B}")),
            weak_exact: build(format!("^(?:{WEAK})$")),
            strong_exact: build(format!("^(?:{STRONG}|{PAY}|s[i1]gn[a4]l)$")),
            named: build(format!(
                r"{B}(?P<app>{all}){B} ?{named_keyword}(?P<sep>:|=|→|->| -|is{B})? ?(?P<id>[@$][a-z0-9][a-z0-9._\-]*|\+ ?[0-9]|[a-z0-9][a-z0-9._\-#:]*)"
            )),
            app_me: build(format!(
                r"{B}(?P<app>{STRONG}|{PAY}|s[i1]gn[a4]l|snap|tele|tg|messenger|wise) me{B}"
            )),
            my_app: build(format!(
                r"{B}(?:my (?P<app>{all}){B} ?{keyword}(?::|=|is{B}|→|->|,|\.|\?|!|$)|(?:to|on|via|into|through|thru|at|(?:send|give|text|dm|pm) (?:you|u)) my (?P<app2>{all}){B})"
            )),
            invitation: build(format!(
                r"{B}(?:(?:add|text|message|msg|dm|ping|call|reach|contact|find|hit|write|catch|follow|pay|send|inbox|buzz|friend|look) (?:me|us)(?: up)?|hmu){B}[^.!?]{{0,25}}?{B}(?:on|via|over|through|thru|in|at|using|with|by) (?:the )?(?P<app>{all}|wa|wsp|wpp|whats|zap){B}"
            )),
            move_to: build(format!(
                r"{B}(?:talk|chat|continue|move|switch|go|connect|speak|meet|hop|jump|call|take (?:this|it)|message|msg|text|communicate){B}[^.!?]{{0,22}}?{B}(?:on|via|over|to|through|thru|in|onto) (?:the )?(?P<app>{STRONG}|s[i1]gn[a4]l|snap|insta|ig|tele|tg|fb|messenger|gram){B}"
            )),
            payment: build(format!(
                r"{B}(?:(?:pay|paid|payment|send|transfer|wire|take|receive|accept|prefer){B}[^.!?]{{0,25}}?{B}(?:via|through|thru|with|using|on|by|over|to) (?:my )?(?P<app>{PAY}|wise|pp){B}|(?:accept|prefer|take) (?P<app2>{PAY}|wise){B}|(?P<app3>{PAY}|wise) (?:to (?:me|my)|works for (?:me|us)){B})"
            )),
            presence: build(format!(
                r"{B}(?:i'?m|i am|are you|are u|you|u|we'?re|also)(?: also)?(?: @[a-z0-9._\-]+)? (?:on|at) (?:the )?(?P<app>{all}){B}"
            )),
            asking: build(format!(
                r"{B}(?:(?:what'?s|whats|wats|got|have|send|give me|drop|share) (?:your|ur|u r|you're)|(?:do|did) (?:you|u) (?:have|use)|(?:you|u) have|have (?:you|u) got) (?P<app>{all}){B}"
            )),
            name_there: build(format!(
                r"{B}(?P<app>{all}){B}[^.!]{{0,12}}?{B}(?:my|the) (?:name|id|handle|username|user ?name|nick)(?: there| on it| on there)? (?:is|:) ?@?[a-z0-9][a-z0-9._\-]*"
            )),
            tag_on: build(format!(
                r"(?P<id>[@$][a-z0-9][a-z0-9._\-]+|{B}[a-z][a-z0-9\-]*[._0-9][a-z0-9._\-]*) (?:on|at|via) (?:the )?(?P<app>{all}){B}"
            )),
            use_app: build(format!(
                r"{B}(?:(?:let'?s|we can|can we|could we|shall we|just|pls|please) (?:use|try|do) (?P<app>{STRONG}|{PAY}|s[i1]gn[a4]l){B}|use (?P<app2>{all}) instead{B})"
            )),
            social_at: build(format!(
                r"{B}(?:(?:my (?:handle|username|user name|socials?|name|tag)|(?:handle|username)(?: everywhere| on (?:all|every)[a-z ]*)? is|follow me|find me|add me|dm me|look me up)(?-u:\b)[^.!?]{{0,25}}?(?P<id>@[a-z0-9_][a-z0-9_.]+)|(?P<id2>@[a-z0-9_][a-z0-9_.]+) (?:on|across|at|everywhere) (?:all )?(?:my |the )?(?:socials|social media|everything|platforms))"
            )),
            cashtag: build(r"\$[a-z][a-z0-9_]{2,}(?-u:\b)".to_owned()),
        }
    }

    /// Finds handles in `text`, a folded view. `phones` are the phone
    /// numbers already found in it (an app name followed by one is a
    /// handle); `disguised` tells whether the original behind a range of
    /// the view was written in disguise.
    pub(crate) fn find(
        &self,
        text: &str,
        phones: &[Range<usize>],
        disguised: impl Fn(Range<usize>) -> bool,
        out: &mut Vec<Range<usize>>,
    ) {
        if text.contains('@') || text.contains('$') {
            self.find_tags(text, out);
        }
        if !self.any_app.is_match(text) {
            return;
        }
        for caps in self.named.captures_iter(text) {
            let app = caps.name("app").expect("app group");
            let id = caps.name("id").expect("id group");
            let sep = caps
                .name("sep")
                .map(|s| s.as_str().trim())
                .or_else(|| caps.name("kw").map(|_| ":"));
            let mine = text[..app.start()].trim_end().ends_with("my");
            if let Some(end) =
                self.named_end(app.as_str(), sep, id.as_str(), id.range(), mine, phones)
            {
                out.push(app.start()..end.max(app.end()));
            }
        }
        for rule in [
            &self.app_me,
            &self.my_app,
            &self.invitation,
            &self.move_to,
            &self.payment,
            &self.presence,
            &self.asking,
            &self.name_there,
            &self.use_app,
        ] {
            for caps in rule.captures_iter(text) {
                let app = ["app", "app2", "app3"]
                    .iter()
                    .find_map(|n| caps.name(n))
                    .expect("an app group");
                let whole = caps.get(0).expect("whole match");
                let weak = self.weak_exact.is_match(app.as_str());
                let thing_after = names_a_thing(text, app.end());
                if thing_after && (weak || std::ptr::eq(rule, &self.use_app)) {
                    continue;
                }
                let end = identifier_after(text, whole.end().max(app.end()));
                out.push(app.start().min(whole.start())..end);
            }
        }
        for caps in self.tag_on.captures_iter(text) {
            // "kim_draws on insta", not "v1.2 on discord".
            let id = &caps["id"];
            if id.starts_with(['@', '$']) || letters(id) >= 2 {
                out.push(caps.get(0).expect("whole match").range());
            }
        }
        // A disguised app name is an invitation by itself.
        for m in self.any_app.find_iter(text) {
            if self.strong_exact.is_match(m.as_str()) && disguised(m.range()) {
                out.push(m.range());
            }
        }
    }

    /// Handles that need no app name: "@kim" given as a handle or across
    /// socials, and Cash App tags in talk about paying.
    fn find_tags(&self, text: &str, out: &mut Vec<Range<usize>>) {
        for caps in self.social_at.captures_iter(text) {
            out.push(caps.get(0).expect("whole match").range());
        }
        let paying = [
            "cash app", "cashapp", "cashtag", "ca$h", "send", "pay", "tip", "transfer",
        ]
        .iter()
        .any(|w| text.contains(w));
        if !paying {
            return;
        }
        let cash_app = ["cash app", "cashapp", "cashtag", "ca$h"]
            .iter()
            .any(|w| text.contains(w));
        for m in self.cashtag.find_iter(text) {
            // Variables in code: "$user_name = ...", "$this->x", "$x[0]".
            let after = text[m.end()..].trim_start();
            if after.starts_with(['=', '[', '(', '-', '.']) && !after.starts_with("- ") {
                continue;
            }
            let before = text[..m.start()].trim_end();
            let standalone =
                m.start() == 0 || matches!(text.as_bytes()[m.start() - 1], b' ' | b'(' | b':');
            let introduced = before.is_empty()
                || before.ends_with(" to")
                || before.ends_with("my")
                || before.ends_with(" is")
                || (cash_app && before.ends_with(':'))
                || before.ends_with("cashtag")
                || before.ends_with("app");
            if standalone && introduced {
                out.push(m.range());
            }
        }
    }

    /// Whether "app [keyword] [sep] id" names a handle; returns where the
    /// finding ends.
    fn named_end(
        &self,
        app: &str,
        sep: Option<&str>,
        id: &str,
        id_range: Range<usize>,
        mine: bool,
        phones: &[Range<usize>],
    ) -> Option<usize> {
        let weak = self.weak_exact.is_match(app);
        if id.starts_with('@') || id.starts_with('$') {
            return (id.len() > 1).then_some(id_range.end);
        }
        if id.starts_with('+') || id.as_bytes()[0].is_ascii_digit() {
            let phone_follows = phones
                .iter()
                .any(|p| p.start <= id_range.start + 1 && p.end > id_range.start);
            return phone_follows.then_some(id_range.start);
        }
        if NOT_NAMES.contains(&id) || id.len() < 2 {
            return None;
        }
        let name_like = id
            .bytes()
            .any(|b| b.is_ascii_digit() || b"._#:-".contains(&b));
        let Some(sep) = sep else {
            // "venmo kim_draws": a user name straight after a well-known app
            // (not "click-to-chat" or "v2").
            let user_name = id.bytes().any(|b| b.is_ascii_digit() || b"._".contains(&b));
            let plausible = !weak && user_name && letters(id) >= 2 && id.len() >= 4;
            return plausible.then_some(id_range.end);
        };
        let strong_sep = matches!(sep, ":" | "=" | "→" | "->");
        let accepted = if weak {
            strong_sep || (mine && name_like)
        } else {
            strong_sep || name_like || mine
        };
        accepted.then_some(id_range.end)
    }
}

/// Words that may follow an app's name when it is the app being meant:
/// "move to signal instead", "find me on snap too".
const AFTER_APP: &[&str] = &[
    "instead", "then", "too", "please", "pls", "plz", "as", "if", "so", "and", "or", "me", "it",
    "with", "because", "since", "for", "later", "now", "tonight", "today", "tomorrow", "same",
    "my", "i'm", "im", "id", "handle", "name", "username", "app", "is", "where", "rather", "to",
    "on", "at", "via", "in", "from", "account", "transfer", "number", "acc", "but", "we", "you",
    "u", "they",
];

/// A short app name followed by a noun is a thing, not the app: "the snap
/// layout", "the signal channel".
fn names_a_thing(text: &str, app_end: usize) -> bool {
    let rest = &text[app_end..];
    // "WhatsApp's green", "Signal-style messages".
    if rest.starts_with("'s ") || rest.starts_with("-style") || rest.starts_with("-like") {
        return true;
    }
    let Some(rest) = rest.strip_prefix(' ') else {
        return false;
    };
    let word = rest
        .split([' ', ',', '.', '!', '?', ';', ':'])
        .next()
        .unwrap_or("");
    word.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()) && !AFTER_APP.contains(&word)
}

/// Where a finding that ends at "is" or ":" should end: past the
/// identifier that follows, spelled joins included ("my ig is kim
/// underscore draws"), so masking hides the identifier and not only the
/// app's name.
fn identifier_after(text: &str, end: usize) -> usize {
    let before = text[..end].trim_end();
    let introduces = before.ends_with(':') || before.ends_with(" is") || before.ends_with('→');
    let rest = &text[end..];
    let trimmed = rest.trim_start_matches([' ', ':']);
    let starts_tag = trimmed.starts_with(['@', '$']);
    if !(introduces || starts_tag) {
        return end;
    }
    let token_end = |from: usize| {
        from + text[from..]
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || b"._-#@$:".contains(b))
            .count()
    };
    let start = end + (rest.len() - trimmed.len());
    let first = text[start..token_end(start)].trim_end_matches(['.', ':', '-']);
    // Numbers are phone findings of their own.
    if first.is_empty() || NOT_NAMES.contains(&first) || first.as_bytes()[0].is_ascii_digit() {
        return end;
    }
    let mut cursor = start + first.len();
    // Spelled joins: "kim underscore draws", "kim dot draws".
    loop {
        let rest = &text[cursor..];
        let Some(after_join) = ["underscore", "dot", "dash", "hyphen"]
            .iter()
            .find_map(|join| {
                rest.strip_prefix(' ')
                    .and_then(|r| r.strip_prefix(join))
                    .and_then(|r| r.strip_prefix(' '))
            })
        else {
            break;
        };
        let next = text.len() - after_join.len();
        let next_end = token_end(next);
        if next_end == next {
            break;
        }
        cursor = next_end;
    }
    cursor
}

fn letters(text: &str) -> usize {
    text.bytes().filter(u8::is_ascii_alphabetic).count()
}
