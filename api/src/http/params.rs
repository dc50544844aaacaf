//! Request parameters: the query string and a form body, merged, decoded strictly.

use msgcontact::ApiError;
use percent_encoding::percent_decode;

/// Every parameter of a request, in arrival order (query first, then body).
#[derive(Debug, Default, Clone)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Decodes `a=b&c=d` form-style (`+` is a space); non-UTF-8 values are an error, not mojibake.
    pub fn parse_into(&mut self, raw: &[u8]) -> Result<(), ApiError> {
        for part in raw.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            let (k, v) = match part.iter().position(|b| *b == b'=') {
                Some(i) => (&part[..i], &part[i + 1..]),
                None => (part, &b""[..]),
            };
            let k = decode(k)?;
            if k.is_empty() {
                continue;
            }
            self.pairs.push((k, decode(v)?));
        }
        Ok(())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The first value of a parameter; empty values count as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    pub fn require(&self, name: &'static str) -> Result<&str, ApiError> {
        self.get(name).ok_or(ApiError::MissingParameter(name))
    }

    /// A list flattened 1-based (`Name.1=…&Name.2=…`), in index order.
    pub fn list(&self, name: &'static str) -> Result<Vec<String>, ApiError> {
        let prefix = format!("{name}.");
        let mut items = Vec::new();
        for (k, v) in &self.pairs {
            if let Some(idx) = k.strip_prefix(&prefix) {
                let i: usize = idx
                    .parse()
                    .ok()
                    .filter(|i| (1..=1000).contains(i))
                    .ok_or(ApiError::InvalidParameter(name))?;
                if !v.is_empty() {
                    items.push((i, v.clone()));
                }
            }
        }
        items.sort_by_key(|(i, _)| *i);
        Ok(items.into_iter().map(|(_, v)| v).collect())
    }

    /// `true`/`True`/`false`/`False`.
    pub fn bool(&self, name: &'static str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some("true" | "True") => Ok(Some(true)),
            Some("false" | "False") => Ok(Some(false)),
            Some(_) => Err(ApiError::InvalidParameter(name)),
        }
    }

    /// A positive integer within `1..=max`, or `default` when absent.
    pub fn int(&self, name: &'static str, default: u64, max: u64) -> Result<u64, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(s) => s
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or(ApiError::InvalidParameter(name)),
        }
    }
}

fn decode(raw: &[u8]) -> Result<String, ApiError> {
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    let bytes: Vec<u8> = percent_decode(&plus_as_space).collect();
    let s = String::from_utf8(bytes).map_err(|_| ApiError::InvalidEncoding)?;
    if s.chars().any(|c| c == '\0') {
        return Err(ApiError::InvalidEncoding);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_bools_and_rejects_bad_utf8() {
        let mut p = Params::default();
        p.parse_into(b"Members.2=b&Members.1=a&X=1+2%2A&Flag=False&Empty=")
            .unwrap();
        assert_eq!(p.list("Members").unwrap(), vec!["a", "b"]);
        assert_eq!(p.get("X"), Some("1 2*"));
        assert_eq!(p.bool("Flag").unwrap(), Some(false));
        assert_eq!(p.get("Empty"), None);
        assert_eq!(p.int("PageSize", 20, 100).unwrap(), 20);
        let mut bad = Params::default();
        assert_eq!(
            bad.parse_into(b"Name=%ff%fe"),
            Err(ApiError::InvalidEncoding)
        );
        let mut bad = Params::default();
        bad.parse_into(b"Members.x=1").unwrap();
        assert!(bad.list("Members").is_err());
    }
}
