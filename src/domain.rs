//! Domain types parsed at the edge: once a value has one of these types, it is valid.

use std::{collections::HashMap, fmt, sync::Mutex};

use rand::Rng;
use uuid::Uuid;

use crate::error::ApiError;

/// `c-` followed by 16 ASCII alphanumerics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContactId(String);

impl ContactId {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let ok = s.len() == 18
            && s.starts_with("c-")
            && s[2..].bytes().all(|b| b.is_ascii_alphanumeric());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ApiError::InvalidParameter("ContactId"))
        }
    }

    pub fn generate() -> Self {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let tail: String = (0..16)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect();
        Self(format!("c-{tail}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An account (tenant): 1 to 32 ASCII digits, as Alibaba account ids are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountId(String);

impl AccountId {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        if !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ApiError::InvalidParameter("AccountId"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request id: a UUID, written upper case as Alibaba services do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(Uuid);

impl RequestId {
    /// Time-ordered (UUIDv7: milliseconds, then 74 random bits), so the request rows of a burst
    /// land at the end of the primary-key index instead of on a random page each.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(s: &str) -> Result<Self, ApiError> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| ApiError::InvalidParameter("RequestId"))
    }

    /// The least id minted at `unix_ms` or later: ids sort by the millisecond they were minted
    /// in, so `request_id >= first_at(t)` is a range of the primary key.
    pub fn first_at(unix_ms: i64) -> Self {
        Self(Uuid::from_u128(
            (unix_ms.clamp(0, (1 << 48) - 1) as u128) << 80,
        ))
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Uuid::encode_buffer();
        f.write_str(self.0.hyphenated().encode_upper(&mut buf))
    }
}

/// Country calling codes a deployment accepts (`MSGCONTACT_SUPPORTED_COUNTRY_CODES`).
#[derive(Debug, Clone)]
pub struct SupportedCountries(Vec<u16>);

impl SupportedCountries {
    pub fn new(codes: Vec<u16>) -> Self {
        Self(codes)
    }

    pub fn parse_list(s: &str) -> Result<Self, String> {
        let codes = s
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.parse::<u16>()
                    .map_err(|_| format!("bad country code {c:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if codes.is_empty() {
            return Err("at least one country code is required".into());
        }
        Ok(Self(codes))
    }

    pub fn contains(&self, cc: u16) -> bool {
        self.0.contains(&cc)
    }
}

impl Default for SupportedCountries {
    fn default() -> Self {
        Self(vec![86])
    }
}

/// A mobile number `<country code>-<national number>`, valid for its country by libphonenumber rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber {
    country_code: u16,
    national: String,
}

/// Numbers whose validation result is remembered, at most (then the memory starts over).
const VALIDATED_MAX: usize = 65_536;

/// Whether `number` (`{cc}-{national}`) is a valid mobile number of country `country_code`, by libphonenumber's
/// metadata. Remembered per number: the metadata's regular expressions were 6 % of the API's CPU
/// under a send burst, and a batch sends to the same numbers again and again.
fn valid_mobile(number: &str, cc: &str, national: &str, country_code: u16) -> bool {
    static VALIDATED: std::sync::LazyLock<Mutex<HashMap<String, bool>>> =
        std::sync::LazyLock::new(Default::default);
    if let Some(&known) = VALIDATED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(number)
    {
        return known;
    }
    // No separate `is_valid`: it is "the type is not Unknown" by the same metadata, which a mobile
    // type already says, and it classified the number a second time (half of this function's cost).
    // The library's national number must be the digits given: parsing strips a trunk prefix
    // (`86-013912341234` reads as 139…), but the number is stored and sent as given, and the
    // provider would get 86 0139….
    let valid = phonenumber::parse(None, format!("+{cc}{national}")).is_ok_and(|parsed| {
        let is_mobile = matches!(
            parsed.number_type(&phonenumber::metadata::DATABASE),
            phonenumber::Type::Mobile | phonenumber::Type::FixedLineOrMobile
        );
        is_mobile
            && parsed.code().value() == country_code
            && parsed.national().to_string() == national
    });
    let mut memo = VALIDATED.lock().unwrap_or_else(|p| p.into_inner());
    if memo.len() >= VALIDATED_MAX {
        memo.clear();
    }
    memo.insert(number.to_owned(), valid);
    valid
}

impl PhoneNumber {
    /// Parses and validates: malformed or not a mobile number → `InvalidParameter.PhoneNumber`;
    /// well formed but a country this deployment does not serve → `InvalidParameter.MobileCountryCode`.
    pub fn parse(s: &str, supported: &SupportedCountries) -> Result<Self, ApiError> {
        let invalid = ApiError::InvalidParameter("PhoneNumber");
        let (cc, national) = s.split_once('-').ok_or(invalid.clone())?;
        let well_formed = (1..=3).contains(&cc.len())
            && cc.bytes().all(|b| b.is_ascii_digit())
            && (4..=14).contains(&national.len())
            && national.bytes().all(|b| b.is_ascii_digit());
        if !well_formed {
            return Err(invalid);
        }
        let country_code: u16 = cc.parse().map_err(|_| invalid.clone())?;
        if !supported.contains(country_code) {
            return Err(ApiError::MobileCountryCode);
        }
        if !valid_mobile(s, cc, national, country_code) {
            return Err(invalid);
        }
        Ok(Self {
            country_code,
            national: national.to_owned(),
        })
    }

    /// Reads a number stored by this service (already validated when it was stored).
    pub fn from_stored(s: &str) -> Option<Self> {
        let (cc, national) = s.split_once('-')?;
        if national.is_empty() || !national.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Self {
            country_code: cc.parse().ok()?,
            national: national.to_owned(),
        })
    }

    /// `86-139****1234`: enough to recognise a number, never enough to dial it. A national
    /// number shorter than 11 digits shows a quarter at each end, so at least half stays hidden.
    pub fn masked(&self) -> String {
        let n = &self.national;
        let (head, tail) = if n.len() >= 11 {
            (3, 4)
        } else {
            (n.len() / 4, n.len() / 4)
        };
        // Digits only (see `parse` and `from_stored`), so byte offsets are char boundaries.
        format!(
            "{}-{}****{}",
            self.country_code,
            &n[..head],
            &n[n.len() - tail..]
        )
    }

    /// E.164 without the plus, as SMS providers want it (`8613912341234`).
    pub fn e164_digits(&self) -> String {
        format!("{}{}", self.country_code, self.national)
    }

    pub fn national(&self) -> &str {
        &self.national
    }

    pub fn country_code(&self) -> u16 {
        self.country_code
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.country_code, self.national)
    }
}

/// Masks a stored number for logs and status answers; falls back to a fixed mask.
pub fn mask_phone(stored: &str) -> String {
    PhoneNumber::from_stored(stored)
        .map(|p| p.masked())
        .unwrap_or_else(|| "****".into())
}

/// A contact name: 2 to 12 letters (any script, CJK included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactName(String);

impl ContactName {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let n = s.chars().count();
        if (2..=12).contains(&n) && s.chars().all(char::is_alphabetic) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ApiError::InvalidParameter("Name"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, checked for shape only (the email channel is a later milestone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let invalid = ApiError::InvalidParameter("EmailAddress");
        let (local, domain) = s.split_once('@').ok_or(invalid.clone())?;
        let ok = s.len() <= 254
            && !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !s.chars().any(|c| c.is_whitespace() || c.is_control())
            && !domain.contains('@');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(invalid)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! closed_set {
    ($(#[$m:meta])* $name:ident, $param:literal, [$($v:ident),+ $(,)?]) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($v),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            pub fn parse(s: &str) -> Result<Self, ApiError> {
                match s {
                    $(stringify!($v) => Ok($name::$v),)+
                    _ => Err(ApiError::InvalidParameter($param)),
                }
            }

            pub fn as_str(&self) -> &'static str {
                match self { $($name::$v => stringify!($v)),+ }
            }
        }
    };
}

closed_set!(
    /// A contact's job title.
    Title,
    "Title",
    [FinanceDirector, TechnicalDirector, MaintenanceDirector, CEO, ProjectDirector, Other]
);

closed_set!(
    /// A kind of message a contact receives.
    MessageType,
    "MessageTypes",
    [ServiceMessage, FaultMessage, AccountExpenses, SecurityMessage, ActivityMessage, ProductMessage]
);

/// A non-empty set of message types, kept sorted and without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageTypes(Vec<MessageType>);

impl MessageTypes {
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Self, ApiError> {
        if values.is_empty() {
            return Err(ApiError::MissingParameter("MessageTypes"));
        }
        let mut v = values
            .iter()
            .map(|s| MessageType::parse(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        v.sort();
        v.dedup();
        Ok(Self(v))
    }

    /// Stored form: comma separated.
    pub fn to_stored(&self) -> String {
        self.0
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn from_stored(s: &str) -> Vec<String> {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// A member a contact is associated with: an account id or a resource directory folder id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(String);

impl MemberId {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ApiError::InvalidParameter("Members"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_id_shape() {
        assert!(ContactId::parse("c-qL4HqKONzOM7abcd").is_ok());
        assert!(ContactId::parse(ContactId::generate().as_str()).is_ok());
        for bad in [
            "",
            "c-",
            "c-qL4HqKONzOM7****",
            "x-qL4HqKONzOM7abcd",
            "c-qL4HqKONzOM7abcde",
        ] {
            assert_eq!(
                ContactId::parse(bad),
                Err(ApiError::InvalidParameter("ContactId"))
            );
        }
    }

    #[test]
    fn phone_numbers_are_validated_and_masked() {
        let cn = SupportedCountries::default();
        let p = PhoneNumber::parse("86-13912341234", &cn).unwrap();
        assert_eq!(p.masked(), "86-139****1234");
        // Whatever a row holds, masking never panics and never shows most of a short number.
        assert_eq!(mask_phone("0-a€"), "****");
        assert_eq!(mask_phone("1-"), "****");
        assert_eq!(mask_phone("44-12345678"), "44-12****78");
        assert_eq!(p.e164_digits(), "8613912341234");
        assert_eq!(p.to_string(), "86-13912341234");
        assert!(PhoneNumber::parse("86-18626811111", &cn).is_ok());
        // Malformed.
        for bad in [
            "",
            "13912341234",
            "86-",
            "86-139abc",
            "+86-13912341234",
            "86-1391234123412345",
        ] {
            assert_eq!(
                PhoneNumber::parse(bad, &cn),
                Err(ApiError::InvalidParameter("PhoneNumber")),
                "{bad}"
            );
        }
        // Well formed, but not a valid Chinese mobile number (fixed line, too short, a trunk
        // prefix the library would strip but the provider would be sent).
        // Twice each: the second answer comes from the remembered validation.
        for _ in 0..2 {
            assert!(PhoneNumber::parse("86-1012345678", &cn).is_err());
            assert!(PhoneNumber::parse("86-139123", &cn).is_err());
            assert_eq!(
                PhoneNumber::parse("86-013912341234", &cn),
                Err(ApiError::InvalidParameter("PhoneNumber"))
            );
            assert!(PhoneNumber::parse("86-13912341234", &cn).is_ok());
        }
        // Unsupported country.
        assert_eq!(
            PhoneNumber::parse("1-2025550123", &cn),
            Err(ApiError::MobileCountryCode)
        );
        let us = SupportedCountries::parse_list("86, 1").unwrap();
        assert!(PhoneNumber::parse("1-2015550123", &us).is_ok());
    }

    /// `valid_mobile` leaves out libphonenumber's `is_valid` because a mobile type implies it; this
    /// holds the library to that over numbers of several numbering plans (shared country codes
    /// included), so an upgrade that changed it would show here.
    #[test]
    fn a_mobile_type_implies_libphonenumber_validity() {
        let (mut mobile, mut checked) = (0, 0);
        for (cc, len, prefixes) in [
            (
                "86",
                11,
                &["130", "139", "150", "170", "186", "199", "10", "21", "400"][..],
            ),
            ("1", 10, &["201", "212", "416", "800", "900", "242"][..]),
            ("7", 10, &["495", "700", "771", "900"][..]),
            ("44", 10, &["20", "74", "79", "800"][..]),
            ("49", 11, &["151", "171", "30", "89"][..]),
        ] {
            for prefix in prefixes {
                for i in 0..40u64 {
                    let rest = format!("{:010}", i.wrapping_mul(2_654_435_761) % 10_000_000_000);
                    let national = format!("{prefix}{}", &rest[..len - prefix.len()]);
                    let Ok(parsed) = phonenumber::parse(None, format!("+{cc}{national}")) else {
                        continue;
                    };
                    checked += 1;
                    if matches!(
                        parsed.number_type(&phonenumber::metadata::DATABASE),
                        phonenumber::Type::Mobile | phonenumber::Type::FixedLineOrMobile
                    ) {
                        mobile += 1;
                        assert!(phonenumber::is_valid(&parsed), "+{cc} {national}");
                    }
                }
            }
        }
        assert!(
            checked > 500 && mobile > 100,
            "{checked} parsed, {mobile} mobile"
        );
    }

    #[test]
    fn names_titles_and_types() {
        assert!(ContactName::parse("tom").is_ok());
        assert!(ContactName::parse("张三").is_ok());
        assert!(ContactName::parse("t").is_err());
        assert!(ContactName::parse("tom1").is_err());
        assert!(ContactName::parse("abcdefghijklm").is_err());
        assert_eq!(Title::parse("CEO"), Ok(Title::CEO));
        assert!(Title::parse("ceo").is_err());
        let t = MessageTypes::parse(&["FaultMessage", "AccountExpenses", "FaultMessage"]).unwrap();
        assert_eq!(t.to_stored(), "FaultMessage,AccountExpenses");
        assert_eq!(
            MessageTypes::parse(&["ResourceDirectory"]),
            Err(ApiError::InvalidParameter("MessageTypes"))
        );
        assert_eq!(
            MessageTypes::parse::<&str>(&[]),
            Err(ApiError::MissingParameter("MessageTypes"))
        );
    }

    #[test]
    fn request_id_is_upper_case_uuid() {
        let id = RequestId::new().to_string();
        assert_eq!(id.len(), 36);
        assert_eq!(id, id.to_uppercase());
        assert_eq!(RequestId::parse(&id).unwrap().to_string(), id);
        // Later ids sort after earlier ones (index locality), and no two are alike.
        let later = RequestId::new().to_string();
        assert!(later > id, "{later} should sort after {id}");
    }

    #[test]
    fn first_at_bounds_the_ids_of_a_millisecond() {
        let before = crate::time::now_ms();
        let id = RequestId::new().to_string();
        let after = crate::time::now_ms();
        assert!(RequestId::first_at(before).to_string() <= id);
        assert!(RequestId::first_at(after + 1).to_string() > id);
        assert_eq!(
            RequestId::first_at(0).to_string(),
            "00000000-0000-0000-0000-000000000000"
        );
    }
}
