//! Property tests of the edge parsers and the signing canonicalizer: arbitrary input never panics,
//! and what can round-trip does (10,000 generated cases per property).

use msgcontact::{
    ApiError,
    domain::{EmailAddress, PhoneNumber, SupportedCountries},
    signing::{self, Acs3Authorization, Acs3Request, OutboundCall},
};
use msgcontact_api::http::params::Params;
use proptest::{collection::vec, prelude::*, sample::Index};

/// Every property runs 10,000 cases; a failing seed is printed by proptest rather than written
/// next to the tests, so a red run leaves the work tree clean.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(10_000)
    }
}

/// Any Unicode scalar values (controls, NUL, surrogate neighbours, astral planes), up to `max`.
fn text(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=max).prop_map(String::from_iter)
}

/// Text biased towards the characters the encodings treat specially.
fn tricky(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        text(max),
        proptest::string::string_regex(&format!("[ *~%+=&?/#a-zA-Z0-9._-]{{0,{max}}}")).unwrap(),
    ]
}

/// An independent RFC 3986 encoder: unreserved bytes as is, every other byte as upper-case `%XX`.
fn rfc3986(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .expect("an encoded UTF-8 string decodes to UTF-8")
        .into_owned()
}

/// Whether `s` is only unreserved characters, `%XX` with upper-case hex, `=` and `&`.
fn only_canonical_chars(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |j: usize| {
                    b.get(j)
                        .is_some_and(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
                };
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
            }
            c if c.is_ascii_alphanumeric() || b"-_.~=&".contains(&c) => i += 1,
            _ => return false,
        }
    }
    true
}

/// The encoded `(key, value)` components of a canonical query, in output order.
fn components(cq: &str) -> Vec<(&str, &str)> {
    if cq.is_empty() {
        return Vec::new();
    }
    cq.split('&')
        .map(|p| p.split_once('=').expect("every component has a `=`"))
        .collect()
}

fn acs3_signature(params: &[(String, String)], secret: &str) -> String {
    let headers = [
        ("host".to_owned(), "example.test".to_owned()),
        ("x-acs-date".to_owned(), "2026-01-01T00:00:00Z".to_owned()),
    ];
    let payload_hash = signing::sha256_hex(b"");
    Acs3Request {
        method: "POST",
        path: "/",
        query: params,
        headers: &headers,
        signed_headers: "host;x-acs-date",
        payload_hash: &payload_hash,
    }
    .signature(secret)
}

fn v1_signature(params: &[(String, String)], secret: &str) -> String {
    signing::v1_signature(secret, &signing::v1_string_to_sign("GET", params))
}

/// Text without NUL, which `Params` rejects by design.
fn no_nul(max: usize) -> impl Strategy<Value = String> {
    tricky(max).prop_map(|s| s.replace('\0', "0"))
}

/// A non-empty parameter name without NUL (`Params` skips empty names).
fn key() -> impl Strategy<Value = String> {
    no_nul(10).prop_map(|k| if k.is_empty() { "k".to_owned() } else { k })
}

/// The list names `Params::list` is called with (it takes a `&'static str`).
const LIST_NAMES: &[&str] = &["Members", "MessageTypes", "ContactIds"];

fn form(pairs: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn parsed(raw: &[u8]) -> Result<Params, ApiError> {
    let mut p = Params::default();
    p.parse_into(raw)?;
    Ok(p)
}

/// Mobile prefixes of China by libphonenumber's metadata (`1740[0-5]` aside): 13x, 145, 147,
/// 15[0-35-9], 16[25-7], 17[0-35-8], 18x, 19[0-35-9].
const CN_MOBILE_PREFIXES: &[&str] = &[
    "130", "131", "132", "133", "134", "135", "136", "137", "138", "139", "145", "147", "150",
    "151", "152", "153", "155", "156", "157", "158", "159", "162", "165", "166", "167", "170",
    "171", "172", "173", "175", "176", "177", "178", "180", "181", "182", "183", "184", "185",
    "186", "187", "188", "189", "190", "191", "192", "193", "195", "196", "197", "198", "199",
];

/// Whether an 11-digit `1[3-9]…` national number is in China's allocated mobile ranges.
fn cn_mobile_allocated(national: &str) -> bool {
    CN_MOBILE_PREFIXES.contains(&&national[..3])
        || (national.starts_with("1740") && (b'0'..=b'5').contains(&national.as_bytes()[4]))
}

fn cn_mobile() -> impl Strategy<Value = String> {
    prop_oneof![
        9 => (prop::sample::select(CN_MOBILE_PREFIXES), "[0-9]{8}")
            .prop_map(|(p, rest)| format!("{p}{rest}")),
        1 => "1740[0-5][0-9]{6}",
    ]
}

fn check_masked(p: &PhoneNumber) -> Result<(), TestCaseError> {
    let national = p.national();
    let masked = p.masked();
    let (cc, rest) = masked
        .split_once('-')
        .expect("masked keeps the country code");
    prop_assert_eq!(cc, p.country_code().to_string());
    let (head, tail) = rest.split_once("****").expect("masked has the stars");
    prop_assert!(head.len() <= 3 && tail.len() <= 4, "{masked}");
    prop_assert!(
        national.starts_with(head) && national.ends_with(tail),
        "{masked}"
    );
    // 3 + 4 digits of a national number of 11 or more; at least half hidden of a shorter one.
    if national.len() >= 11 {
        prop_assert_eq!(head.len() + tail.len(), 7, "{}", masked);
    } else {
        prop_assert!(2 * (head.len() + tail.len()) <= national.len(), "{masked}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    // ---- a) signing: the ACS3 canonical query and the v1 string to sign ----

    /// `percent_encode` is exactly RFC 3986 (`%20` for space, `%2A` for `*`, `~` as is) and decodes back.
    #[test]
    fn percent_encode_is_rfc3986(s in tricky(24)) {
        let enc = signing::percent_encode(&s);
        prop_assert_eq!(&enc, &rfc3986(&s));
        prop_assert!(!enc.contains(['+', '*', ' ']));
        prop_assert_eq!(enc.matches("%20").count(), s.matches(' ').count());
        prop_assert_eq!(enc.matches("%2A").count(), s.matches('*').count());
        prop_assert_eq!(enc.matches('~').count(), s.matches('~').count());
        prop_assert_eq!(percent_decode(&enc), s);
    }

    /// The canonical query is sorted, uses only unreserved/`%XX`/`=`/`&`, and decodes to the input.
    #[test]
    fn canonical_query_sorted_encoded_and_lossless(
        params in vec((tricky(10), tricky(10)), 0..7),
    ) {
        let cq = signing::canonical_query(&params);
        prop_assert!(only_canonical_chars(&cq), "{cq}");
        let comps = components(&cq);
        prop_assert_eq!(comps.len(), params.len());
        prop_assert!(comps.windows(2).all(|w| w[0] <= w[1]), "not sorted: {cq}");
        for (k, v) in &params {
            prop_assert!(comps.contains(&(rfc3986(k).as_str(), rfc3986(v).as_str())));
        }
        let mut decoded: Vec<(String, String)> = comps
            .iter()
            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
            .collect();
        let mut expected = params.clone();
        decoded.sort();
        expected.sort();
        prop_assert_eq!(decoded, expected);
    }

    /// v1 string to sign: `METHOD&%2F&` then the canonical query encoded once more.
    #[test]
    fn v1_string_to_sign_shape(
        method in "[A-Z]{3,7}",
        params in vec((tricky(10), tricky(10)), 0..7),
    ) {
        let cq = signing::canonical_query(&params);
        let sts = signing::v1_string_to_sign(&method, &params);
        let parts: Vec<&str> = sts.split('&').collect();
        prop_assert_eq!(parts.len(), 3, "{}", sts);
        prop_assert_eq!(parts[0], method.as_str());
        prop_assert_eq!(parts[1], "%2F");
        prop_assert_eq!(parts[2], rfc3986(&cq));
        prop_assert_eq!(percent_decode(parts[2]), cq);
    }

    /// Both signatures are deterministic, ignore parameter order, and change with any value.
    #[test]
    fn signatures_deterministic_and_value_sensitive(
        (params, shuffled) in vec((tricky(8), tricky(8)), 1..6)
            .prop_flat_map(|p| (Just(p.clone()), Just(p).prop_shuffle())),
        at in any::<Index>(),
        other in tricky(8),
        secret in "[A-Za-z0-9]{1,30}",
    ) {
        let acs3 = acs3_signature(&params, &secret);
        let v1 = v1_signature(&params, &secret);
        prop_assert_eq!(acs3.len(), 64);
        prop_assert!(acs3.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        prop_assert_eq!(&acs3, &acs3_signature(&params.clone(), &secret));
        prop_assert_eq!(&v1, &v1_signature(&params.clone(), &secret));
        prop_assert_eq!(&acs3, &acs3_signature(&shuffled, &secret));
        prop_assert_eq!(&v1, &v1_signature(&shuffled, &secret));

        let mut changed = params.clone();
        let i = at.index(changed.len());
        changed[i].1 = if other == changed[i].1 { format!("{other}x") } else { other };
        prop_assert_ne!(&acs3, &acs3_signature(&changed, &secret));
        prop_assert_ne!(&v1, &v1_signature(&changed, &secret));
        prop_assert!(!signing::signatures_equal(&acs3, &acs3_signature(&changed, &secret)));
    }

    // ---- b) request parameters ----

    /// Arbitrary bytes: `Ok` exactly when every non-empty-key pair decodes to UTF-8 without NUL,
    /// and then the pairs are form-urlencoded decoding minus empty keys.
    #[test]
    fn params_arbitrary_bytes(raw in prop_oneof![
        vec(any::<u8>(), 0..64),
        vec(prop::sample::select(b"ab=&%+02fF7 \xc3\xa9\xff\x00".to_vec()), 0..48),
    ]) {
        let model: Vec<(String, String)> = form_urlencoded::parse(&raw)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let bad = |s: &str| s.contains(['\0', '\u{FFFD}']);
        match parsed(&raw) {
            Ok(p) => {
                let expected: Vec<_> = model.into_iter().filter(|(k, _)| !k.is_empty()).collect();
                prop_assert_eq!(p.pairs(), &expected[..]);
                prop_assert!(p.pairs().iter().all(|(k, v)| !k.contains('\0') && !v.contains('\0')));
            }
            Err(e) => {
                prop_assert_eq!(e, ApiError::InvalidEncoding);
                // Lossy decoding shows why: a replacement character or a NUL in a kept pair.
                prop_assert!(
                    model.iter().any(|(k, v)| bad(k) || (!k.is_empty() && bad(v))),
                    "{:?}", String::from_utf8_lossy(&raw)
                );
            }
        }
    }

    /// Form-encoded pairs parse back exactly, query then body in order; `get` is the first non-empty.
    #[test]
    fn params_round_trip(
        query in vec((key(), no_nul(10)), 0..6),
        body in vec((key(), no_nul(10)), 0..6),
    ) {
        let mut p = Params::default();
        p.parse_into(form(&query).as_bytes()).unwrap();
        p.parse_into(form(&body).as_bytes()).unwrap();
        let all: Vec<(String, String)> = query.iter().chain(&body).cloned().collect();
        prop_assert_eq!(p.pairs(), &all[..]);
        for (k, _) in &all {
            let first = all.iter().find(|(n, v)| n == k && !v.is_empty()).map(|(_, v)| v.as_str());
            prop_assert_eq!(p.get(k), first);
        }
    }

    /// `Name.1..Name.N`, in any order among other parameters, parse back to the list in order
    /// (empty items dropped); an index outside 1..=1000 or not a number is `InvalidParameter`.
    #[test]
    fn params_flattened_lists(
        name in prop::sample::select(LIST_NAMES),
        items in vec(prop_oneof![4 => no_nul(8), 1 => Just(String::new())], 0..12),
        others in vec(("[A-Z][a-z]{0,6}", no_nul(6)), 0..4),
        seed in any::<u64>(),
        bad_index in prop_oneof![Just("0".to_owned()), Just("1001".to_owned()), "[a-z]{1,3}"],
    ) {
        let mut pairs: Vec<(String, String)> = items
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("{name}.{}", i + 1), v.clone()))
            .chain(others)
            .collect();
        // A cheap deterministic shuffle (the order of arrival must not matter).
        let mut s = seed | 1;
        for i in (1..pairs.len()).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            pairs.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let p = parsed(form(&pairs).as_bytes()).unwrap();
        let expected: Vec<String> = items.into_iter().filter(|v| !v.is_empty()).collect();
        prop_assert_eq!(p.list(name).unwrap(), expected);
        for other in LIST_NAMES.iter().filter(|n| **n != name) {
            prop_assert_eq!(p.list(other).unwrap(), Vec::<String>::new());
        }
        pairs.push((format!("{name}.{bad_index}"), "x".to_owned()));
        let p = parsed(form(&pairs).as_bytes()).unwrap();
        prop_assert_eq!(p.list(name), Err(ApiError::InvalidParameter(name)));
    }

    // ---- c) the Authorization header ----

    /// Arbitrary headers never panic; a parsed header has non-empty AK and signature taken verbatim.
    #[test]
    fn authorization_arbitrary(header in prop_oneof![
        text(48),
        text(48).prop_map(|s| format!("ACS3-HMAC-SHA256 {s}")),
        "ACS3-HMAC-SHA256[ ,=;a-zA-Z]{0,60}",
        "ACS3-HMAC-SHA256 (Credential|SignedHeaders|Signature|X)=[a-z;=]{0,4}(,[ ]?(Credential|SignedHeaders|Signature|X)=[a-z;=]{0,4}){0,4}",
    ]) {
        if let Some(a) = Acs3Authorization::parse(&header) {
            prop_assert!(header.starts_with(signing::ACS3_ALGORITHM));
            prop_assert!(!a.access_key_id.is_empty() && !a.signature.is_empty());
            let credential = format!("Credential={}", a.access_key_id);
            let signed_headers = format!("SignedHeaders={}", a.signed_headers);
            let signature = format!("Signature={}", a.signature);
            prop_assert!(header.contains(&credential));
            prop_assert!(header.contains(&signed_headers));
            prop_assert!(header.contains(&signature));
        }
    }

    /// A header rendered from valid components, in any order and spacing, parses back to them.
    #[test]
    fn authorization_round_trip(
        ak in "[A-Za-z0-9]{1,32}",
        names in vec("[a-z][a-z0-9-]{0,20}", 0..8),
        sig in "[0-9a-f]{1,64}",
        order in Just([0usize, 1, 2]).prop_shuffle(),
        lead in " {1,3}",
        seps in vec(prop_oneof![Just(","), Just(", "), Just(" , ")], 2),
    ) {
        let signed_headers = names.join(";");
        let fields = [
            format!("Credential={ak}"),
            format!("SignedHeaders={signed_headers}"),
            format!("Signature={sig}"),
        ];
        let header = format!(
            "{}{lead}{}{}{}{}{}",
            signing::ACS3_ALGORITHM,
            fields[order[0]], seps[0], fields[order[1]], seps[1], fields[order[2]],
        );
        prop_assert_eq!(
            Acs3Authorization::parse(&header),
            Some(Acs3Authorization { access_key_id: ak, signed_headers, signature: sig })
        );
    }

    /// What `OutboundCall::sign` renders parses back and verifies the way the API checks it.
    #[test]
    fn outbound_authorization_parses_and_verifies(
        ak in "[A-Za-z0-9]{1,24}",
        secret in "[A-Za-z0-9]{1,30}",
        query in vec((tricky(8), tricky(8)), 0..5),
        body in proptest::option::of("[a-zA-Z0-9=&%+]{0,40}"),
        nonce in "[0-9a-f]{32}",
    ) {
        let call = OutboundCall {
            host: "sms.example.test",
            action: "SendSms",
            version: "2017-05-25",
            query: &query,
            form_body: body.as_deref().map(str::as_bytes),
        };
        let headers = call.sign(&ak, &secret, "2026-01-01T00:00:00Z", &nonce);
        let value = |name: &str| {
            headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
        };
        let auth = Acs3Authorization::parse(&value("authorization")).expect("parses");
        prop_assert_eq!(&auth.access_key_id, &ak);
        let names: Vec<&str> = headers
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| *k != "authorization")
            .collect();
        prop_assert_eq!(auth.signed_headers.clone(), names.join(";"));
        let signed: Vec<(String, String)> = auth
            .signed_headers
            .split(';')
            .map(|h| (h.to_owned(), value(h)))
            .collect();
        let payload_hash = signing::sha256_hex(body.as_deref().unwrap_or("").as_bytes());
        prop_assert_eq!(value("x-acs-content-sha256"), payload_hash.clone());
        let expected = Acs3Request {
            method: "POST",
            path: "/",
            query: &query,
            headers: &signed,
            signed_headers: &auth.signed_headers,
            payload_hash: &payload_hash,
        }
        .signature(&secret);
        prop_assert!(signing::signatures_equal(&expected, &auth.signature));
    }

    // ---- d) phone numbers and email addresses ----

    /// Arbitrary input never panics and fails only with the documented errors; an accepted number
    /// renders to a string that parses to the same value, and its masked form hides the middle.
    #[test]
    fn phone_arbitrary_and_round_trip(s in prop_oneof![
        text(20),
        "[0-9]{0,4}-[0-9]{0,16}",
        "0{0,2}(86|1|44|7|49|852)-[0-9]{4,14}",
        "(86|1|44|7|49|852)-[1-9][0-9]{6,11}",
        // Mobile-shaped numbers of each supported plan, so that many cases are accepted.
        "(86-1[3-9][0-9]{9}|1-[2-9][0-9]{2}[2-9][0-9]{6}|44-7[0-9]{9}|7-9[0-9]{9}|49-1[5-7][0-9]{8,9}|852-[5-9][0-9]{7})",
    ]) {
        let supported = SupportedCountries::new(vec![86, 1, 44, 7, 49, 852]);
        match PhoneNumber::parse(&s, &supported) {
            Ok(p) => {
                let rendered = p.to_string();
                prop_assert_eq!(
                    &rendered,
                    &format!("{}-{}", p.country_code(), p.national())
                );
                prop_assert_eq!(PhoneNumber::parse(&rendered, &supported), Ok(p.clone()));
                prop_assert_eq!(p.e164_digits(), format!("{}{}", p.country_code(), p.national()));
                prop_assert!(p.national().bytes().all(|b| b.is_ascii_digit()));
                prop_assert!((4..=14).contains(&p.national().len()));
                prop_assert_eq!(PhoneNumber::from_stored(&rendered), Some(p.clone()));
                check_masked(&p)?;
            }
            Err(e) => prop_assert!(
                e == ApiError::InvalidParameter("PhoneNumber") || e == ApiError::MobileCountryCode,
                "{:?}", e
            ),
        }
    }

    /// `86-1[3-9]` + 9 digits is accepted exactly when it lies in an allocated mobile range.
    #[test]
    fn phone_chinese_mobiles_accepted(national in prop_oneof![cn_mobile(), "1[3-9][0-9]{9}"]) {
        let s = format!("86-{national}");
        let parsed = PhoneNumber::parse(&s, &SupportedCountries::default());
        if cn_mobile_allocated(&national) {
            let p = parsed.expect("an allocated mobile number is accepted");
            prop_assert_eq!(p.to_string(), s);
            prop_assert_eq!(p.masked(), format!("86-{}****{}", &national[..3], &national[7..]));
            check_masked(&p)?;
        } else {
            prop_assert_eq!(parsed, Err(ApiError::InvalidParameter("PhoneNumber")));
        }
    }

    /// Masking any stored ASCII number shows at most its first 3 and last 4 national digits.
    #[test]
    fn phone_masked_hides_the_middle(cc in 1u16..1000, national in "[0-9]{1,20}") {
        let p = PhoneNumber::from_stored(&format!("{cc}-{national}")).expect("stored shape");
        check_masked(&p)?;
    }

    /// Arbitrary input never panics; an accepted address is kept verbatim, re-parses, and has the
    /// checked shape; generated `local@label.tld` addresses are accepted.
    #[test]
    fn email_arbitrary_and_round_trip(
        s in prop_oneof![
            text(32),
            "[a-z0-9.@ ]{0,6}@[a-z0-9.@]{0,8}",
        ],
        local in "[A-Za-z0-9._%+-]{1,20}",
        domain in "[a-z0-9-]{1,20}(\\.[a-z0-9-]{1,10}){0,2}\\.[a-z]{2,6}",
    ) {
        if let Ok(e) = EmailAddress::parse(&s) {
            prop_assert_eq!(e.as_str(), s.as_str());
            prop_assert_eq!(EmailAddress::parse(e.as_str()), Ok(e.clone()));
            prop_assert_eq!(s.matches('@').count(), 1);
            prop_assert!(s.len() <= 254);
            prop_assert!(!s.chars().any(|c| c.is_whitespace() || c.is_control()));
            let (local, domain) = s.split_once('@').unwrap();
            prop_assert!(!local.is_empty() && domain.contains('.'));
            prop_assert!(!domain.starts_with('.') && !domain.ends_with('.'));
        }
        let address = format!("{local}@{domain}");
        prop_assert_eq!(
            EmailAddress::parse(&address).map(|e| e.as_str().to_owned()),
            Ok(address)
        );
    }
}
