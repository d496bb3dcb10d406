//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the secret's 32 bytes (what follows
//! `whsec_`, base64-decoded). During a rotation's overlap the header carries one signature per
//! secret, space-separated, as the scheme allows; a receiver accepts the request when any of
//! them verifies.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::backend::WebhookSecret;

/// The signature of one request with one secret: `v1,<base64>`.
pub fn signature(secret: &WebhookSecret, id: &str, timestamp: i64, body: &str) -> String {
    sign_with_key(&secret.0, id, timestamp, body)
}

fn sign_with_key(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// The `webhook-signature` header: one signature per secret, space-separated.
pub fn header<'a>(
    secrets: impl IntoIterator<Item = &'a WebhookSecret>,
    id: &str,
    timestamp: i64,
    body: &str,
) -> String {
    secrets
        .into_iter()
        .map(|s| signature(s, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (and of its reference libraries'
    /// tests): secret, id, timestamp and body give exactly this signature.
    #[test]
    fn matches_the_specification_example() {
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .expect("base64");
        assert_eq!(
            sign_with_key(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                "{\"test\": 2432232314}"
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn one_signature_per_secret() {
        let (a, b) = (WebhookSecret([1; 32]), WebhookSecret([2; 32]));
        let h = header([&a, &b], "msg_1", 1_700_000_000, "{}");
        let parts: Vec<&str> = h.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], signature(&a, "msg_1", 1_700_000_000, "{}"));
        assert_ne!(parts[0], parts[1]);
        assert!(parts[0].starts_with("v1,"));
        // Any change of id, time or body changes it.
        assert_ne!(parts[0], signature(&a, "msg_2", 1_700_000_000, "{}"));
        assert_ne!(parts[0], signature(&a, "msg_1", 1_700_000_001, "{}"));
        assert_ne!(parts[0], signature(&a, "msg_1", 1_700_000_000, "{ }"));
    }
}
