//! The server's Engine.IO WebSocket URL, from the base URL an application configures.

use herald_protocol::codec::{SOCKET_PATH, WEBSOCKET_QUERY};

/// Turns the server's absolute base URL into its Engine.IO WebSocket URL:
/// `ws(s)://host[/prefix]/socket.io/?EIO=4&transport=websocket`. Query and fragment of the
/// base URL are dropped. Relative URLs are refused (the browser client resolves them against the page first).
pub fn socket_url(raw: &str) -> Result<String, String> {
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
}
