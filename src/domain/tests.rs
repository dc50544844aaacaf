//! The domain types' parsing, against good and bad input.

use super::*;
use crate::error::ApiError;

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
