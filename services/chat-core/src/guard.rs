//! The off-platform contact guard on chat-core's side: which texts are
//! checked, and what a check hands the store. The detection itself lives
//! in the `contact-guard` crate; what a finding leads to (flag, mask,
//! block) depends on the thread's policy, which the store reads under the
//! thread's lock, so it is decided there.

use contact_guard::ContactDetector;

use crate::domain::ContactPolicy;
use crate::store::ContactFindings;

/// The detector, compiled once, and the deployment's policy.
#[derive(Debug)]
pub struct ContactGuard {
    detector: ContactDetector,
    default_policy: ContactPolicy,
}

impl ContactGuard {
    /// A guard whose threads default to `default_policy` (`CONTACT_POLICY`).
    pub fn new(default_policy: ContactPolicy) -> Self {
        ContactGuard {
            detector: ContactDetector::new(),
            default_policy,
        }
    }

    /// The deployment's policy.
    pub fn default_policy(&self) -> ContactPolicy {
        self.default_policy
    }

    /// What `text` (a user's text message, new or edited) holds; `None`
    /// when nothing. Checked whatever the default policy, since a thread
    /// may have its own.
    pub fn check(&self, text: &str) -> Option<ContactFindings> {
        let findings = self.detector.detect(text);
        if findings.is_empty() {
            return None;
        }
        Some(ContactFindings {
            kinds: contact_guard::kinds(&findings)
                .iter()
                .map(|kind| kind.as_str())
                .collect(),
            masked: contact_guard::mask(text, &findings),
            default_policy: self.default_policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_kinds_in_order_and_masks_each_finding() {
        let guard = ContactGuard::new(ContactPolicy::Flag);
        assert_eq!(guard.check("the invoice for job 4821 is $1,250.00"), None);
        let found = guard
            .check("mail me at jane.doe@example.com or call +1 415 555 0134")
            .expect("findings");
        assert_eq!(found.kinds, ["email", "phone"]);
        assert_eq!(
            found.masked,
            "mail me at [contact hidden] or call [contact hidden]"
        );
        assert_eq!(found.default_policy, ContactPolicy::Flag);
    }
}
