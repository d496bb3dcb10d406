//! Pure helpers (no JavaScript), unit-tested on the host.

use herald_protocol::codec::{SOCKET_PATH, WEBSOCKET_QUERY};

/// Turns the server's absolute base URL into its Engine.IO WebSocket URL:
/// `ws(s)://host[/prefix]/socket.io/?EIO=4&transport=websocket`. Query and fragment of the
/// base URL are dropped. (Relative URLs are resolved by the JavaScript wrapper first.)
pub(crate) fn socket_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| format!("invalid URL {raw:?}: expected http(s):// or ws(s)://"))?;
    let ws_scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => {
            return Err(format!(
                "invalid URL {raw:?}: expected http(s):// or ws(s)://"
            ));
        }
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err(format!("invalid URL {raw:?}: no host"));
    }
    let path = path.trim_end_matches('/');
    Ok(format!(
        "{ws_scheme}://{host}{path}/{SOCKET_PATH}?{WEBSOCKET_QUERY}"
    ))
}

/// Delay before reconnection attempt `attempt` (0 for the first): `initial · 2^attempt`
/// capped at `max`, with "equal jitter" (`random` in `[0, 1)` picks a value in `[d/2, d]`), so
/// clients dropped together do not come back together.
pub(crate) fn backoff_ms(initial: f64, max: f64, attempt: u32, random: f64) -> f64 {
    let ceiling = (initial * 2f64.powi(attempt.min(31) as i32)).min(max.max(initial));
    let half = ceiling / 2.0;
    half + (ceiling - half) * random.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_urls() {
        let ok = |raw: &str| socket_url(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        assert_eq!(
            ok("http://127.0.0.1:8080"),
            "ws://127.0.0.1:8080/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            ok("https://h.example/"),
            "wss://h.example/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            ok("https://h.example/herald/?x=1#y"),
            "wss://h.example/herald/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            ok("ws://h:1/a/b"),
            "ws://h:1/a/b/socket.io/?EIO=4&transport=websocket"
        );
        for bad in ["ftp://h", "h:8080", "http://", "/relative"] {
            assert!(socket_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        assert_eq!(backoff_ms(100.0, 1000.0, 0, 1.0), 100.0);
        assert_eq!(backoff_ms(100.0, 1000.0, 0, 0.0), 50.0);
        assert_eq!(backoff_ms(100.0, 1000.0, 3, 1.0), 800.0);
        assert_eq!(backoff_ms(100.0, 1000.0, 4, 1.0), 1000.0);
        assert_eq!(backoff_ms(100.0, 1000.0, 60, 0.5), 750.0);
        // max below initial is raised to initial
        assert_eq!(backoff_ms(2000.0, 1000.0, 5, 1.0), 2000.0);
    }
}
