//! Where the marketplace's dispute, payment and job services meet the
//! people in a thread (docs/api.md#grpc-api `IntegrationService`). Each operation writes
//! a typed message and, in the same transaction, an integration event (the
//! outbox): there is no moment where one exists without the other.
//!
//! Metadata schemas, validated on the way in (the message's `metadata` is
//! exactly the request's fields, absent ones as `null`):
//! - `dispute`: `{"reason": string (1-1000), "details": string|null (≤4000)}`
//! - `payment`: `{"amount": "125.00" (positive, ≤2 decimals), "currency":
//!   ISO 4217 code, "job_id": string|null}`
//! - `job_update`: `{"job_id": string, "status": string (1-64), "note":
//!   string|null (≤1000)}`

use serde_json::json;
use uuid::Uuid;

use crate::{
    chat::ChatError,
    domain::{
        Caller, Message, MessageKind, normalize_metadata, now_micros, parse_id, validate_content,
        validate_job_id,
    },
    live::{IntegrationStream, LiveEvents},
    store::{Appended, NewIntegrationEvent, NewMessage},
    writer::MessageWriter,
};

/// Active ISO 4217 currency codes.
const CURRENCIES: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND \
BOB BRL BSD BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR \
FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS \
KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN \
MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG \
SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS \
VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG";

fn invalid(message: impl Into<String>) -> ChatError {
    ChatError::InvalidArgument(message.into())
}

/// A short free-text field: `min..=max` characters, no control characters
/// (line breaks and tabs allowed when `multiline`).
fn text_field(
    field: &str,
    value: &str,
    min: usize,
    max: usize,
    multiline: bool,
) -> Result<(), ChatError> {
    let count = value.chars().count();
    if count < min || count > max {
        return Err(invalid(format!("{field}: must be {min}-{max} characters")));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')))
    {
        return Err(invalid(format!(
            "{field}: control characters are not allowed"
        )));
    }
    Ok(())
}

/// A positive decimal amount with at most two decimals, e.g. `125.00`.
pub fn validate_amount(amount: &str) -> Result<(), ChatError> {
    let bad =
        || invalid("amount: a positive decimal string with at most 2 decimals, e.g. \"125.00\"");
    let (whole, fraction) = amount.split_once('.').unwrap_or((amount, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole)
        || whole.len() > 15
        || (whole.len() > 1 && whole.starts_with('0'))
        || (amount.contains('.') && (!digits(fraction) || fraction.len() > 2))
    {
        return Err(bad());
    }
    if amount.bytes().all(|b| b == b'0' || b == b'.') {
        return Err(bad());
    }
    Ok(())
}

/// An active ISO 4217 code, upper case.
pub fn validate_currency(currency: &str) -> Result<(), ChatError> {
    if currency.len() == 3 && CURRENCIES.split(' ').any(|c| c == currency) {
        Ok(())
    } else {
        Err(invalid("currency: an ISO 4217 code such as USD or EUR"))
    }
}

/// The integration operations.
#[derive(Debug, Clone)]
pub struct Integrations {
    writer: MessageWriter,
    live: LiveEvents,
}

struct Typed {
    kind: MessageKind,
    content: String,
    metadata: serde_json::Value,
    event_type: &'static str,
}

impl Integrations {
    /// Operations appending through `writer`, watched through `live`.
    pub fn new(writer: MessageWriter, live: LiveEvents) -> Self {
        Integrations { writer, live }
    }

    /// Service tokens only: the integration events after `after_id`,
    /// optionally of some types; stored ones first, then live ones.
    pub async fn watch(
        &self,
        caller: &Caller,
        after_id: i64,
        event_types: Vec<String>,
    ) -> Result<IntegrationStream, ChatError> {
        if !matches!(caller, Caller::Service(_)) {
            return Err(ChatError::PermissionDenied(
                "WatchIntegrationEvents needs a service token",
            ));
        }
        for event_type in &event_types {
            text_field("event_types", event_type, 1, 64, false)?;
        }
        self.live.watch_integration(after_id, event_types).await
    }

    async fn write(
        &self,
        caller: &Caller,
        thread_id: &str,
        typed: Typed,
    ) -> Result<Message, ChatError> {
        let thread_id: Uuid = parse_id(thread_id).ok_or(ChatError::NotFound("thread"))?;
        let metadata = typed.metadata.to_string();
        let new = NewMessage {
            id: Uuid::now_v7(),
            thread_id,
            sender_id: caller.user_id().map(str::to_owned),
            kind: typed.kind,
            content: typed.content,
            metadata: metadata.clone(),
            client_msg_id: None,
            posted_by: match caller {
                Caller::Service(service) => Some(service.clone()),
                Caller::User(_) => None,
            },
            idempotency_key: None,
            created_at: now_micros(),
            contact: None,
            event: Some(NewIntegrationEvent {
                event_type: typed.event_type.to_owned(),
                actor_id: caller.user_id().map(str::to_owned),
                payload: metadata,
            }),
        };
        match self.writer.append(new).await? {
            Some(Appended::Created(message, _) | Appended::Duplicate(message)) => Ok(message),
            // Only users' text is checked for contact details.
            Some(Appended::Blocked { kinds, .. }) => Err(ChatError::ContactBlocked(kinds)),
            None => Err(ChatError::NotFound("thread")),
        }
    }

    /// A participant (or a service) opens a dispute.
    pub async fn request_dispute(
        &self,
        caller: &Caller,
        thread_id: &str,
        reason: &str,
        details: Option<&str>,
    ) -> Result<Message, ChatError> {
        text_field("reason", reason, 1, 1000, false)?;
        if let Some(details) = details {
            text_field("details", details, 0, 4000, true)?;
        }
        self.write(
            caller,
            thread_id,
            Typed {
                kind: MessageKind::Dispute,
                content: format!("Dispute requested: {reason}"),
                metadata: json!({"reason": reason, "details": details}),
                event_type: "dispute.requested",
            },
        )
        .await
    }

    /// A participant (or a service) asks for a payment.
    pub async fn initiate_payment(
        &self,
        caller: &Caller,
        thread_id: &str,
        amount: &str,
        currency: &str,
        job_id: Option<&str>,
    ) -> Result<Message, ChatError> {
        validate_amount(amount)?;
        validate_currency(currency)?;
        if let Some(job_id) = job_id {
            validate_job_id(job_id)?;
        }
        self.write(
            caller,
            thread_id,
            Typed {
                kind: MessageKind::Payment,
                content: format!("Payment of {amount} {currency} requested"),
                metadata: json!({"amount": amount, "currency": currency, "job_id": job_id}),
                event_type: "payment.initiated",
            },
        )
        .await
    }

    /// A participant (or a service) reports a job's status.
    pub async fn post_job_update(
        &self,
        caller: &Caller,
        thread_id: &str,
        job_id: &str,
        status: &str,
        note: Option<&str>,
    ) -> Result<Message, ChatError> {
        validate_job_id(job_id)?;
        text_field("status", status, 1, 64, false)?;
        if let Some(note) = note {
            text_field("note", note, 0, 1000, true)?;
        }
        self.write(
            caller,
            thread_id,
            Typed {
                kind: MessageKind::JobUpdate,
                content: format!("Job {job_id}: {status}"),
                metadata: json!({"job_id": job_id, "status": status, "note": note}),
                event_type: "job.updated",
            },
        )
        .await
    }

    /// A service posts a system, payment, dispute or job_update message,
    /// idempotent on its key: the same key returns the original (`false`).
    pub async fn post_system_event(
        &self,
        caller: &Caller,
        thread_id: &str,
        kind: Option<MessageKind>,
        content: &str,
        metadata: Option<&str>,
        idempotency_key: &str,
    ) -> Result<(Message, bool), ChatError> {
        let Caller::Service(service) = caller else {
            return Err(ChatError::PermissionDenied(
                "PostSystemEvent needs a service token",
            ));
        };
        let kind = match kind {
            Some(
                kind @ (MessageKind::System
                | MessageKind::Payment
                | MessageKind::Dispute
                | MessageKind::JobUpdate),
            ) => kind,
            _ => {
                return Err(invalid(
                    "message_type: one of SYSTEM, PAYMENT, DISPUTE, JOB_UPDATE",
                ));
            }
        };
        validate_content(content)?;
        text_field("idempotency_key", idempotency_key, 1, 128, false)?;
        let metadata = normalize_metadata(metadata)?;
        let thread_id: Uuid = parse_id(thread_id).ok_or(ChatError::NotFound("thread"))?;
        let payload = json!({
            "message_type": kind.as_str(),
            "content": content,
            "metadata": serde_json::from_str::<serde_json::Value>(&metadata).unwrap_or_default(),
        })
        .to_string();
        let new = NewMessage {
            id: Uuid::now_v7(),
            thread_id,
            sender_id: None,
            kind,
            content: content.to_owned(),
            metadata,
            client_msg_id: None,
            posted_by: Some(service.clone()),
            idempotency_key: Some(idempotency_key.to_owned()),
            created_at: now_micros(),
            contact: None,
            event: Some(NewIntegrationEvent {
                event_type: "system_event.posted".to_owned(),
                actor_id: None,
                payload,
            }),
        };
        match self.writer.append(new).await? {
            Some(Appended::Created(message, _)) => Ok((message, true)),
            Some(Appended::Duplicate(message)) => Ok((message, false)),
            Some(Appended::Blocked { kinds, .. }) => Err(ChatError::ContactBlocked(kinds)),
            None => Err(ChatError::NotFound("thread")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts() {
        for good in ["1", "125.00", "0.01", "10.5", "999999999999999"] {
            assert!(validate_amount(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "0",
            "0.00",
            "-1",
            "1.234",
            "1.",
            ".5",
            "01",
            "1e3",
            "12,50",
            " 1",
            "1000000000000000",
        ] {
            assert!(validate_amount(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn currencies() {
        for good in ["USD", "EUR", "JPY", "GBP"] {
            assert!(validate_currency(good).is_ok());
        }
        for bad in ["usd", "US", "USDX", "XXX", "ABC", ""] {
            assert!(validate_currency(bad).is_err(), "{bad}");
        }
    }
}
