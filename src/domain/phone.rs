//! Phone numbers: the countries a deployment accepts, mobile numbers valid by libphonenumber's
//! rules, and their masked form for logs and answers.

use std::{collections::HashMap, fmt, sync::Mutex};

use crate::error::ApiError;

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
