//! The public API: what `detect` returns for each disguise, and how `mask`
//! and `kinds` treat findings.

use std::sync::Arc;

use contact_guard::{ContactDetector, ContactKind, Finding, MASK, kinds, mask};

fn found(detector: &ContactDetector, text: &str) -> Vec<(ContactKind, String)> {
    detector
        .detect(text)
        .into_iter()
        .map(|f| (f.kind, text[f.range].to_owned()))
        .collect()
}

fn finding(kind: ContactKind, range: std::ops::Range<usize>) -> Finding {
    Finding { kind, range }
}

#[test]
fn kinds_are_spelled_as_on_the_wire() {
    assert_eq!(ContactKind::Email.as_str(), "email");
    assert_eq!(ContactKind::Phone.as_str(), "phone");
    assert_eq!(ContactKind::Link.as_str(), "link");
    assert_eq!(ContactKind::Handle.as_str(), "handle");
}

#[test]
fn detector_is_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ContactDetector>();
    let detector = Arc::new(ContactDetector::new());
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let detector = Arc::clone(&detector);
            std::thread::spawn(move || kinds(&detector.detect("call 555-123-4567")))
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().expect("thread"), [ContactKind::Phone]);
    }
}

#[test]
fn mask_replaces_one_finding() {
    let text = "mail me: maria@gmail.com thanks";
    let masked = mask(text, &[finding(ContactKind::Email, 9..24)]);
    assert_eq!(masked, "mail me: [contact hidden] thanks");
}

#[test]
fn mask_replaces_several_findings_in_any_order() {
    let text = "a 111 b 222 c";
    let findings = [
        finding(ContactKind::Phone, 8..11),
        finding(ContactKind::Phone, 2..5),
    ];
    assert_eq!(
        mask(text, &findings),
        "a [contact hidden] b [contact hidden] c"
    );
}

#[test]
fn mask_merges_overlaps_and_ignores_bad_ranges() {
    let text = "héllo wörld";
    let findings = [
        // "hél" and "llo" overlap in "l": one mask.
        finding(ContactKind::Link, 0..4),
        finding(ContactKind::Link, 3..6),
        // Starts inside "é": ignored.
        finding(ContactKind::Link, 2..5),
        // Off a character boundary (inside "ö") and past the end: ignored.
        finding(ContactKind::Link, 8..9),
        finding(ContactKind::Link, 10..40),
    ];
    assert_eq!(mask(text, &findings), "[contact hidden] wörld");
    assert_eq!(mask(text, &[]), text);
}

#[test]
fn mask_keeps_unicode_around_findings() {
    let detector = ContactDetector::new();
    let text = "📧 écris-moi: ｐｅｔｅｒ＠ｇｍａｉｌ．ｃｏｍ 🙏";
    let findings = detector.detect(text);
    assert_eq!(kinds(&findings), [ContactKind::Email]);
    assert_eq!(mask(text, &findings), format!("📧 écris-moi: {MASK} 🙏"));
}

#[test]
fn kinds_are_deduplicated_in_wire_order() {
    let findings = [
        finding(ContactKind::Handle, 0..1),
        finding(ContactKind::Phone, 2..3),
        finding(ContactKind::Handle, 4..5),
        finding(ContactKind::Email, 6..7),
        finding(ContactKind::Link, 8..9),
    ];
    assert_eq!(
        kinds(&findings),
        [
            ContactKind::Email,
            ContactKind::Phone,
            ContactKind::Link,
            ContactKind::Handle
        ]
    );
    assert!(kinds(&[]).is_empty());
}

#[test]
fn disguised_email_addresses() {
    let detector = ContactDetector::new();
    use ContactKind::Email;
    for (text, address) in [
        ("mail me at john at gmail dot com", "john at gmail dot com"),
        ("john(at)gmail(dot)com", "john(at)gmail(dot)com"),
        (
            "reach me: j o h n @ g m a i l . c o m",
            "j o h n @ g m a i l . c o m",
        ),
        ("ΜΑRΙΑ@GΜΑΙL.COM", "ΜΑRΙΑ@GΜΑΙL.COM"),
        ("ryan_dev (at) gmail please", "ryan_dev (at) gmail"),
        ("gmail: bobbydesigns88", "gmail: bobbydesigns88"),
        ("tomasz AT wp DOT pl", "tomasz AT wp DOT pl"),
    ] {
        assert_eq!(
            found(&detector, text),
            [(Email, address.to_owned())],
            "{text}"
        );
    }
}

#[test]
fn disguised_phone_numbers() {
    let detector = ContactDetector::new();
    use ContactKind::Phone;
    for (text, number) in [
        ("my number is +1 (415) 555-0198", "+1 (415) 555-0198"),
        (
            "five five five one two three four, call me",
            "five five five one two three four",
        ),
        ("my cell: 5five5 123 4five67", "5five5 123 4five67"),
        ("Text me 4 1 5 - 5 5 5 - 0 1 9 8", "4 1 5 - 5 5 5 - 0 1 9 8"),
        ("Call 555.867.5309 after 6", "555.867.5309"),
        ("number: 555 O12 3456", "555 O12 3456"),
        (
            "call me 5\u{fe0f}\u{20e3}5\u{fe0f}\u{20e3}5\u{fe0f}\u{20e3} 1234567",
            "5\u{fe0f}\u{20e3}5\u{fe0f}\u{20e3}5\u{fe0f}\u{20e3} 1234567",
        ),
    ] {
        assert_eq!(
            found(&detector, text),
            [(Phone, number.to_owned())],
            "{text}"
        );
    }
}

#[test]
fn disguised_links() {
    let detector = ContactDetector::new();
    use ContactKind::Link;
    for (text, link) in [
        ("see mysite dot com for more", "mysite dot com"),
        ("portfolio at janedoe[.]design", "janedoe[.]design"),
        ("t.me/johnny_dev", "t.me/johnny_dev"),
        (
            "hxxps://mysite[.]com/contact",
            "hxxps://mysite[.]com/contact",
        ),
        ("my website: johndev,com", "johndev,com"),
    ] {
        assert_eq!(found(&detector, text), [(Link, link.to_owned())], "{text}");
    }
}

#[test]
fn handles_and_invitations() {
    let detector = ContactDetector::new();
    for text in [
        "hit me up on whats app",
        "w h a t s a p p me and we skip the fees",
        "t.e.l.e.g.r.a.m - same username as here",
        "we can chat on wh4tsapp",
        "Ｔｅｌｅｇｒａｍ：@johnny_dev",
        "send it to my cashapp $JohnnyB",
        "venmo @Anna-Kowalski",
        "let's move this to Signal, it's easier",
        "pay me via zelle instead",
    ] {
        assert_eq!(
            kinds(&detector.detect(text)),
            [ContactKind::Handle],
            "{text}"
        );
    }
}

#[test]
fn a_handle_with_a_number_is_both() {
    let detector = ContactDetector::new();
    let text = "whatsapp: +49 151 23456789";
    assert_eq!(
        found(&detector, text),
        [
            (ContactKind::Handle, "whatsapp".to_owned()),
            (ContactKind::Phone, "+49 151 23456789".to_owned())
        ]
    );
}

#[test]
fn ordinary_marketplace_talk_is_left_alone() {
    let detector = ContactDetector::new();
    for text in [
        "The total is $1,250.00 including the second milestone",
        "Budget is 1 250 EUR, or 300k for the whole programme",
        "Deadline 2026-12-01, or 12/01/2026, at 10:30 or 3pm on Dec 1st",
        "Upgraded to v2.3.1; 1.4.0-beta has the fix",
        "Order ORD-2024-00017, job #48213, invoice 2026-0042",
        "Conversion went up 12.5%, rating 4.5/5",
        "The log file has 1500000 lines",
        "Please check report.pdf and app.py",
        "We need WhatsApp Business API integration and a Telegram bot",
        "Add a PayPal checkout button next to Stripe",
        "Should we use ASP.NET Core 8 or Node.js?",
        "this.store.dispatch(updateCart(items))",
        "switch to the snap layout",
        "Let's talk in the signal channel",
    ] {
        assert_eq!(found(&detector, text), [], "{text}");
    }
}

#[test]
fn findings_are_sorted_disjoint_and_on_char_boundaries() {
    let detector = ContactDetector::new();
    let texts = [
        "ｊｏｈｎ＠ｇｍａｉｌ．ｃｏｍ and 🇯🇴🇭🇳 call +１ ４１５ ５５５ ０１９８ or ｗｗｗ．ｓｈｏｐ．ｃｏｍ",
        "é@é.é ñ 5 5 5 ñ 1 2 3 ñ 4 5 6 7 t\u{200d}e\u{200d}l\u{200d}e\u{200d}g\u{200d}r\u{200d}a\u{200d}m",
        "mail: d.e.v.i.n@gmail.com, tel 030 901820, site a-b.io, skype: live:x_1",
        "",
        " ",
        "🙂🙂🙂",
    ];
    for text in texts {
        let findings = detector.detect(text);
        for pair in findings.windows(2) {
            assert!(
                pair[0].range.end <= pair[1].range.start,
                "{text}: {findings:?}"
            );
        }
        for f in &findings {
            assert!(
                f.range.start < f.range.end && f.range.end <= text.len(),
                "{text}: {f:?}"
            );
            assert!(text.is_char_boundary(f.range.start) && text.is_char_boundary(f.range.end));
        }
        let _ = mask(text, &findings);
    }
}

#[test]
fn spanish_at_and_dot() {
    let detector = ContactDetector::new();
    let text = "Mi correo es lucia punto gomez arroba gmail punto com";
    assert_eq!(
        found(&detector, text),
        [(
            ContactKind::Email,
            "lucia punto gomez arroba gmail punto com".to_owned()
        )]
    );
}

#[test]
fn handles_without_an_app_name_or_with_one_after() {
    let detector = ContactDetector::new();
    for (text, handle) in [
        (
            "My handle everywhere is @kimdraws",
            "My handle everywhere is @kimdraws",
        ),
        ("kim_draws on insta", "kim_draws on insta"),
        ("send $ to $kimdraws", "$kimdraws"),
        ("venmo kim_draws", "venmo kim_draws"),
        ("Let's use Telegram", "Let's use Telegram"),
    ] {
        assert_eq!(
            found(&detector, text),
            [(ContactKind::Handle, handle.to_owned())],
            "{text}"
        );
    }
    for text in [
        "echo $HOME and send the output",
        "@Maria can you review the mockups?",
        "deploy v1.2 on discord",
        "Let's use the Telegram API for notifications",
        "We need to add a WhatsApp click-to-chat link",
        "The username field should show @handle style names",
        "The PHP code: $user_name = $_POST['name']; then send it",
        "Let's use WhatsApp's green for the CTA",
        "Could we use Signal-style disappearing messages in the app?",
    ] {
        assert_eq!(found(&detector, text), [], "{text}");
    }
}

#[test]
fn masking_a_handle_hides_its_identifier() {
    let detector = ContactDetector::new();
    let text = "sure, my ig is kim underscore draws, talk soon";
    let findings = detector.detect(text);
    assert_eq!(mask(text, &findings), "sure, [contact hidden], talk soon");
}

#[test]
fn digits_of_other_scripts_and_glued_domains() {
    let detector = ContactDetector::new();
    assert_eq!(
        kinds(&detector.detect("555一二三4567")),
        [ContactKind::Phone]
    );
    assert_eq!(
        kinds(&detector.detect("call ٥٥٥١٢٣٤٥٦٧")),
        [ContactKind::Phone]
    );
    assert_eq!(
        found(&detector, "kimdraws dotcom"),
        [(ContactKind::Link, "kimdraws dotcom".to_owned())]
    );
}
