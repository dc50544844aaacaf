//! The shape of an action's answer: a JSON object of its fields (the renderer adds `RequestId`).

use msgcontact::ApiError;
use serde_json::{Map, Value};

/// An action's fields, or the catalog error it answers with.
pub type OpResult = Result<Map<String, Value>, ApiError>;

/// Builds a JSON object from `key => value` pairs.
macro_rules! obj {
    ($($k:literal => $v:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut m = serde_json::Map::new();
        $(m.insert($k.to_string(), serde_json::json!($v));)*
        m
    }};
}
pub(crate) use obj;
