//! Numbers in a published payload that every client can decode: the check that refuses a
//! payload with a number beyond the range of a 64-bit float (`1e400`, `-1e309`).
//!
//! Why: Herald relays a published payload byte for byte (a `RawValue`, whose syntax check does
//! not convert numbers), so `1e400` would be accepted, answered 200 and delivered, and then
//! every client that decodes it would fail on it: serde_json (the Rust, wasm and mobile
//! clients) refuses the whole event with "number out of range", JavaScript turns it into
//! `Infinity`. An event no subscriber can read is an event lost without telling anyone, so the
//! publisher is refused instead. Integers beyond 64 bits stay accepted: every parser reads
//! them, as floats.
//!
//! [`check_numbers`] parses the payload once more, through a visitor that keeps nothing, so
//! every number is converted as a client would; its cost is one scan of the payload.

use std::fmt;

use serde::Deserializer;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::error::{ErrorCode, Refusal};

/// Refuses `json` (JSON text that already passed a syntax check) when it holds a number no
/// 64-bit float can represent. `what` names the field in the message.
///
/// ```
/// use herald_protocol::numbers::check_numbers;
/// assert!(check_numbers(r#"{"a": [1, 2.5e300, 123456789012345678901234567890]}"#, "payload").is_ok());
/// assert!(check_numbers(r#"{"a": [1e400]}"#, "payload").is_err());
/// ```
pub fn check_numbers(json: &str, what: &str) -> Result<(), Refusal> {
    let mut de = serde_json::Deserializer::from_str(json);
    // The payload passed the depth check (at most MAX_JSON_DEPTH levels), far below serde_json's
    // recursion limit, so the walk below cannot overflow.
    de.deserialize_any(Walk).map(|Walk| ()).map_err(|e| {
        Refusal::new(
            ErrorCode::InvalidBody,
            format!(
                "{what} holds a number beyond the range of a 64-bit float (about ±1.8e308), which no client could decode: {e}"
            ),
        )
    })
}

/// Visits every value of a JSON document and keeps none.
struct Walk;

impl<'de> de::Deserialize<'de> for Walk {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Walk)
    }
}

impl<'de> Visitor<'de> for Walk {
    type Value = Walk;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_str<E>(self, _: &str) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_unit<E>(self) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Walk, A::Error> {
        while seq.next_element::<Walk>()?.is_some() {}
        Ok(Walk)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Walk, A::Error> {
        while map.next_entry::<IgnoredAny, Walk>()?.is_some() {}
        Ok(Walk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_a_float_holds_pass_and_those_beyond_are_refused() {
        for ok in [
            "0",
            "-0.0",
            "1.7976931348623157e308",
            "-1.7976931348623157e308",
            "5e-324",
            "1e-400",
            "18446744073709551616",
            r#"{"deep": [[{"x": 1e308}]], "s": "1e400 in a string is text"}"#,
        ] {
            assert!(check_numbers(ok, "payload").is_ok(), "{ok}");
        }
        for bad in ["1e400", "-1e309", r#"{"a": [1, {"b": 2e308}]}"#] {
            let refusal = check_numbers(bad, "payload").expect_err(bad);
            assert_eq!(refusal.code, ErrorCode::InvalidBody);
            assert!(
                refusal.message.contains("64-bit float"),
                "{}",
                refusal.message
            );
        }
    }
}
