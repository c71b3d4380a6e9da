//! Pieces of regular expression shared by the rules, and the word lists
//! they are judged with.
//!
//! Every pattern runs on a folded view (see `view`): lowercase, one space
//! between words, look-alikes already mapped to ASCII. So patterns use a
//! literal space, ASCII classes and ASCII word boundaries only, which keeps
//! the `regex` crate's Unicode tables out of the build.

/// ASCII word boundary.
pub(crate) const B: &str = r"(?-u:\b)";

/// Top-level domains a bare word may end in to count as a link
/// ("brightpixel.agency"). File extensions that are also country domains
/// (`.py`, `.rs`, `.md`, `.sh`, `.ai`, `.so`, `.is`, `.it`) are left out so
/// "app.py" or "logo.ai" stay file names; they still count in e-mail
/// addresses and after `http://` or `www.`.
pub(crate) const LINK_TLDS: &str = "com|net|org|io|co|me|app|dev|info|biz|xyz|site|online|store|shop|tech|ly|gg|tv|link|page|us|uk|de|fr|ca|au|nl|es|eu|ch|pl|ru|in|br|mx|se|dk|fi|pt|ie|nz|za|jp|cn|sg|hk|cz|vn|agency|design|studio|digital|media|art|blog|cloud|pro|live|life|world|club|space|website|ee|gl|gle|be|ws|cc|fm|to";

/// Top-level domains accepted after a disguised "at" in an e-mail address.
pub(crate) fn email_tlds() -> String {
    format!("{LINK_TLDS}|it|is|ai|edu|gov|mail|email|ua|kr|tw|ar|cl|co\\.uk")
}

/// Free mail providers: "john at gmail" needs no top-level domain to be an
/// address.
pub(crate) const PROVIDERS: &str = "g ?mail|googlemail|hotmail|outlook|yahoo|ymail|icloud|protonmail|proton|gmx|aol|yandex|fastmail|zoho";

/// Hosts that look like links but are technology names. (The domains
/// reserved for examples are not among them: an address at example.com is
/// still written as an address, and test messages use exactly those.)
pub(crate) const NOT_LINKS: &[&str] = &["asp.net", "vb.net", "ado.net", "socket.io"];

/// Words that, as the first label of "word . tld" or "word dot tld", are
/// ordinary prose rather than a site name ("in dot net", "a dot com").
pub(crate) const PROSE_WORDS: &[&str] = &[
    "a", "an", "the", "in", "on", "at", "it", "is", "to", "of", "and", "or", "for", "with", "this",
    "that", "home", "then", "me", "my", "your", "our", "we", "i", "you", "so", "just", "done",
    "here", "there", "up", "out", "be", "by", "as", "if", "not", "no", "yes", "ok", "okay", "all",
    "thanks", "now", "too", "also", "from", "per", "via", "im", "its",
];

/// Identifiers of variables in code: "this.store", "user.info".
pub(crate) const CODE_WORDS: &[&str] = &[
    "this", "self", "user", "req", "res", "ctx", "window", "document", "obj", "props", "state",
    "data", "config", "event", "err", "console", "process", "module", "exports", "os", "sys", "np",
    "pd", "math", "json", "app", "e", "el", "item", "row", "args", "opts", "options", "env",
];

/// Whether `word` is one of `list`.
pub(crate) fn is_one_of(word: &str, list: &[&str]) -> bool {
    list.contains(&word)
}
