//! JSON nesting depth: how deep arrays and objects are nested in a payload, and the check that
//! refuses a payload nested deeper than [`MAX_JSON_DEPTH`] (`payload_too_deep`).
//!
//! Why a bound: Herald relays a published payload byte for byte (it keeps it as a `RawValue`
//! and never builds a tree of it), so nothing on the server would stop `[[[[…]]]]` nested
//! thousands deep; but every receiver parses it, and many parsers recurse (serde_json gives up
//! at 128 levels, others overflow their stack). The bound keeps every payload Herald delivers
//! parseable by every client, with the event envelope around it.
//!
//! Depth counts containers: a scalar is 0, `[]` and `{}` are 1, `{"a": [1]}` is 2.
//! [`nesting_depth`] scans the JSON text once without parsing it: brackets inside strings do
//! not count, nor do escaped quotes end a string.

use serde_json::Value;

use crate::error::{ErrorCode, Refusal};
pub use crate::limits::MAX_JSON_DEPTH;

/// The deepest nesting of arrays and objects in `json`, which must be JSON text (the scan does
/// not validate it; on text that is not JSON the answer is meaningless but bounded by its
/// length). Brackets inside strings are not counted.
///
/// ```
/// use herald_protocol::depth::nesting_depth;
/// assert_eq!(nesting_depth(br#"42"#), 0);
/// assert_eq!(nesting_depth(br#"{"a": [1, {"b": "]]]}"}]}"#), 3);
/// assert_eq!(nesting_depth(br#""\"[[[\\""#), 0);
/// ```
pub fn nesting_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The deepest nesting of arrays and objects in a parsed value (iterative: no recursion).
pub fn value_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        let depth = depth + 1;
        deepest = deepest.max(depth);
        stack.extend(children.map(|c| (c, depth)));
    }
    deepest
}

/// Refuses a depth over [`MAX_JSON_DEPTH`] with `payload_too_deep`.
pub fn check_depth(depth: usize, what: &str) -> Result<(), Refusal> {
    if depth > MAX_JSON_DEPTH {
        return Err(Refusal::new(
            ErrorCode::PayloadTooDeep,
            format!(
                "{what} nests arrays and objects {depth} levels deep; the limit is {MAX_JSON_DEPTH}"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn counts_containers_not_scalars() {
        assert_eq!(nesting_depth(b"null"), 0);
        assert_eq!(nesting_depth(b"\"text\""), 0);
        assert_eq!(nesting_depth(b"[]"), 1);
        assert_eq!(nesting_depth(b"{}"), 1);
        assert_eq!(nesting_depth(br#"[1, [2], {"a": {"b": []}}]"#), 4);
        assert_eq!(nesting_depth(br#"[[],[],[]]"#), 2);
        assert_eq!(nesting_depth(nested(5000).as_bytes()), 5000);
    }

    #[test]
    fn strings_do_not_count() {
        assert_eq!(nesting_depth(br#"["[[[{{{"]"#), 1);
        assert_eq!(nesting_depth(br#"{"k\"[[": "\\"}"#), 1);
        // An escaped backslash before a quote: the quote ends the string.
        assert_eq!(nesting_depth(br#"["\\", ["x"]]"#), 2);
        // An escaped quote does not end it.
        assert_eq!(nesting_depth(br#"["\"[[[", "\"]"]"#), 1);
        assert_eq!(nesting_depth(r#"["é[ü{", {"ß": ["日本"]}]"#.as_bytes()), 3);
        assert_eq!(nesting_depth(br#"["\u005b\u005b"]"#), 1);
    }

    #[test]
    fn check_refuses_only_past_the_limit() {
        assert!(check_depth(MAX_JSON_DEPTH, "payload").is_ok());
        let refusal = check_depth(MAX_JSON_DEPTH + 1, "payload").expect_err("too deep");
        assert_eq!(refusal.code, ErrorCode::PayloadTooDeep);
        assert!(refusal.message.contains("limit"), "{}", refusal.message);
    }

    #[test]
    fn every_parser_of_client_json_applies_the_bound() {
        use crate::api::PublishRequest;
        use crate::messages::{ClientEvent, HandshakeAuth};
        let ok = nested(MAX_JSON_DEPTH);
        let deep = nested(MAX_JSON_DEPTH + 1);
        let publish = |p: &str| {
            PublishRequest::parse(
                format!(r#"{{"channelName":"c","payload":{p}}}"#).as_bytes(),
                1 << 20,
            )
            .map(|_| ())
            .map_err(|r| r.code)
        };
        assert_eq!(publish(&ok), Ok(()));
        assert_eq!(publish(&deep), Err(ErrorCode::PayloadTooDeep));
        // Thousands deep: refused, not relayed (RawValue alone would take it).
        assert_eq!(publish(&nested(5000)), Err(ErrorCode::PayloadTooDeep));
        // Brackets inside strings are payload text, not nesting.
        assert_eq!(publish(&format!("{:?}", "[".repeat(5000))), Ok(()));

        let event = |p: &str| {
            let body: Value =
                serde_json::from_str(&format!(r#"{{"channelName":"private-c","payload":{p}}}"#))
                    .expect("json");
            ClientEvent::parse(&body).map(|_| ()).map_err(|r| r.code)
        };
        assert_eq!(event(&ok), Ok(()));
        assert_eq!(event(&deep), Err(ErrorCode::PayloadTooDeep));

        let auth = |extra: &str| {
            let v: Value = serde_json::from_str(&format!(r#"{{"projectId":"acme","x":{extra}}}"#))
                .expect("json");
            HandshakeAuth::parse(Some(&v))
                .map(|_| ())
                .map_err(|r| r.code)
        };
        // The auth object itself is one level.
        assert_eq!(auth(&nested(MAX_JSON_DEPTH - 1)), Ok(()));
        assert_eq!(
            auth(&nested(MAX_JSON_DEPTH)),
            Err(ErrorCode::PayloadTooDeep)
        );
    }

    /// Arbitrary JSON values, strings full of brackets, quotes and backslashes included.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[\\[\\]{}\"\\\\a-zé\\u{1F600} ]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(12, 96, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[\\[\\]{}\"\\\\a-z]{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The byte scan agrees with the depth of the parsed value, compact or pretty-printed.
        #[test]
        fn scan_agrees_with_the_parsed_value(v in json_value()) {
            let depth = value_depth(&v);
            let compact = serde_json::to_string(&v).expect("serializes");
            let pretty = serde_json::to_string_pretty(&v).expect("serializes");
            prop_assert_eq!(nesting_depth(compact.as_bytes()), depth);
            prop_assert_eq!(nesting_depth(pretty.as_bytes()), depth);
        }

        /// Wrapping a value in `k` arrays adds exactly `k`.
        #[test]
        fn wrapping_adds_depth(v in json_value(), k in 0usize..40) {
            let inner = serde_json::to_string(&v).expect("serializes");
            let wrapped = format!("{}{inner}{}", "[".repeat(k), "]".repeat(k));
            prop_assert_eq!(nesting_depth(wrapped.as_bytes()), value_depth(&v) + k);
        }

        /// Never panics on arbitrary bytes, and never answers more than their length.
        #[test]
        fn total_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            prop_assert!(nesting_depth(&bytes) <= bytes.len());
        }
    }
}
