//! The status event and its enumerations (SPEC §2).
//!
//! `Event<'a>` borrows its strings from the record it was decoded from
//! (`Cow::Borrowed`), so the hot decode path allocates only for JSON strings
//! with escapes. Call [`Event::into_owned`] to keep one beyond its record.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::time::Micros;

/// Field limits of SPEC §2, in characters.
pub mod limits {
    /// `event_id`: 1–128 characters.
    pub const EVENT_ID_MAX: usize = 128;
    /// `message_id`: 1–128 characters.
    pub const MESSAGE_ID_MAX: usize = 128;
    /// `client_id`: 1–64 characters of `[A-Za-z0-9_.-]`.
    pub const CLIENT_ID_MAX: usize = 64;
    /// `recipient`: `+` then 8–15 digits (E.164).
    pub const RECIPIENT_DIGITS_MIN: usize = 8;
    /// `recipient`: `+` then 8–15 digits (E.164).
    pub const RECIPIENT_DIGITS_MAX: usize = 15;
    /// `template`: WhatsApp caps template names at 512 characters.
    pub const TEMPLATE_MAX: usize = 512;
    /// `event_time` may be at most this far ahead of its record's
    /// timestamp (the broker's clock on a `LogAppendTime` topic).
    pub const MAX_FUTURE_MICROS: i64 = 5 * 60 * 1_000_000;
    /// On a record stamped by its producer (`CreateTime`) the future rule
    /// allows this much more: the stamp is the producer's clock, and a
    /// producer minutes slow must not dead-letter valid events. Fixed, not
    /// configured, so every consumer group reaches the same verdict.
    pub const PRODUCER_CLOCK_SLACK_MICROS: i64 = 10 * 60 * 1_000_000;
    /// Earliest `event_time`: 0000-01-01T00:00:00Z, the first instant RFC 3339
    /// can write (an Avro long can hold any i64; nothing downstream has to
    /// do arithmetic near its limits).
    pub const EVENT_TIME_MIN: i64 = crate::time::EARLIEST;
    /// First `event_time` past the range: 10000-01-01T00:00:00Z.
    pub const EVENT_TIME_END: i64 = crate::time::LATEST + 1;
}

/// One status change of one WhatsApp message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// Unique per event: the idempotency key.
    pub event_id: Cow<'a, str>,
    /// The WhatsApp message id (`wamid.…`); also the Kafka record key.
    pub message_id: Cow<'a, str>,
    /// The tenant.
    pub client_id: Cow<'a, str>,
    /// E.164 phone number of the recipient (personal data).
    pub recipient: Cow<'a, str>,
    /// Which status this event reports.
    pub status: Status,
    /// Pricing category of the message.
    pub category: Category,
    /// Whether the platform reports the message as billable.
    pub billable: bool,
    /// Market of the recipient.
    pub country: Country,
    /// Template name, if the message used one.
    pub template: Option<Cow<'a, str>>,
    /// When the status happened, UTC microseconds since the Unix epoch.
    pub event_time: Micros,
    /// Error code reported with a `failed` status.
    pub error_code: Option<i64>,
    /// How Meta prices the message, when the producer says (None: it did
    /// not; billing reads it as `regular`).
    pub pricing_type: Option<PricingType>,
}

impl Event<'_> {
    /// Copies every borrowed string so the event outlives its record.
    pub fn into_owned(self) -> Event<'static> {
        Event {
            event_id: Cow::Owned(self.event_id.into_owned()),
            message_id: Cow::Owned(self.message_id.into_owned()),
            client_id: Cow::Owned(self.client_id.into_owned()),
            recipient: Cow::Owned(self.recipient.into_owned()),
            status: self.status,
            category: self.category,
            billable: self.billable,
            country: self.country,
            template: self.template.map(|t| Cow::Owned(t.into_owned())),
            event_time: self.event_time,
            error_code: self.error_code,
            pricing_type: self.pricing_type,
        }
    }
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in schema order (the Avro symbol order).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire name (`"delivered"`, `"marketing"`, …).
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses a wire name; `None` for anything else (case-sensitive).
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }

            /// Position in [`Self::ALL`], handy for dense counter arrays.
            pub const fn index(self) -> usize {
                self as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// Delivery status of a message. `delivered` may never arrive when `read` does.
    Status {
        /// Accepted by the platform.
        Accepted = "accepted",
        /// Sent to WhatsApp.
        Sent = "sent",
        /// Delivered to the handset.
        Delivered = "delivered",
        /// Read by the recipient.
        Read = "read",
        /// Failed; `error_code` says why.
        Failed = "failed",
    }
}

string_enum! {
    /// WhatsApp pricing category.
    Category {
        /// Marketing conversation.
        Marketing = "marketing",
        /// Utility (transactional) conversation.
        Utility = "utility",
        /// One-time passwords and the like.
        Authentication = "authentication",
        /// User-initiated service conversation; never billed by notiflow.
        Service = "service",
    }
}

string_enum! {
    /// How Meta prices the message (the status webhook's `pricing.type`):
    /// which window it was sent in. Optional on the wire: a producer that
    /// does not send it means `regular` (docs/events.md). Which types are
    /// charged on a day is the rate card's business (`[[free]]` rows).
    PricingType {
        /// Outside any free window.
        Regular = "regular",
        /// Inside the 24-hour customer service window.
        FreeCustomerService = "free_customer_service",
        /// Inside the 72-hour free entry-point window (click-to-WhatsApp ads).
        FreeEntryPoint = "free_entry_point",
    }
}

/// An ISO 3166-1 alpha-2 country code, upper case, known to the standard.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// Accepts exactly two upper-case letters that name an assigned ISO 3166-1 code.
    pub fn parse(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        if b.len() != 2 || !b[0].is_ascii_uppercase() || !b[1].is_ascii_uppercase() {
            return None;
        }
        let code = [b[0], b[1]];
        is_assigned(code).then_some(Country(code))
    }

    /// The two letters.
    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII upper-case letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    /// The two letters as bytes.
    pub const fn bytes(self) -> [u8; 2] {
        self.0
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Country({})", self.as_str())
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The 249 officially assigned ISO 3166-1 alpha-2 codes, grouped by first letter.
const ASSIGNED: [&str; 26] = [
    "DEFGILMOQRSTUWXZ", // A: AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ
    "ABDEFGHIJLMNOQRSTVWYZ",
    "ACDFGHIKLMNORUVWXYZ",
    "EJKMOZ",
    "CEGHRST",
    "IJKMOR",
    "ABDEFGHILMNPQRSTUWY",
    "KMNRTU",
    "DELMNOQRST",
    "EMOP",
    "EGHIMNPRWYZ",
    "ABCIKRSTUVY",
    "ACDEFGHKLMNOPQRSTUVWXYZ",
    "ACELFGIOPRUZ",
    "M",
    "AEFGHKLMNRSTWY",
    "A",
    "EOSUW",
    "ABCDEGHIJKLMNORSTVXYZ",
    "CDFGHJKLMNORTVWZ",
    "AGMSYZ",
    "ACEGINU",
    "FS",
    "",
    "ET",
    "AMW",
];

fn is_assigned(code: [u8; 2]) -> bool {
    ASSIGNED[(code[0] - b'A') as usize]
        .as_bytes()
        .contains(&code[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_are_249_assigned_country_codes() {
        let n: usize = ASSIGNED.iter().map(|s| s.len()).sum();
        assert_eq!(n, 249);
    }

    #[test]
    fn country_accepts_real_codes_only() {
        for ok in ["BR", "US", "IN", "DE", "ZW", "AX", "GB"] {
            assert_eq!(Country::parse(ok).map(|c| c.to_string()), Some(ok.into()));
        }
        for bad in ["br", "B", "BRA", "XX", "UK", "ZZ", "", "1A", "ÄB"] {
            assert!(Country::parse(bad).is_none(), "{bad} should be rejected");
        }
    }

    #[test]
    fn enums_round_trip_through_their_wire_names() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(*s));
        }
        for c in Category::ALL {
            assert_eq!(Category::parse(c.as_str()), Some(*c));
        }
        assert_eq!(Status::parse("Delivered"), None);
        assert_eq!(Status::Read.index(), 3);
    }
}
