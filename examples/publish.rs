//! Publishes one event to a public channel.
//!
//! Run with:
//!
//! ```text
//! # a local server, a project and a key (once):
//! cargo run -p herald-server -- serve --data-dir ./herald-data &
//! cargo run -p herald-server -- admin project create --id demo --name Demo
//! cargo run -p herald-server -- admin key create --project demo --name demo   # prints "key"
//!
//! HERALD_URL=http://127.0.0.1:8080 HERALD_API_KEY=hk_... \
//!     cargo run -p herald-sdk --example publish -- orders '{"order": 42}'
//! ```
//!
//! The payload argument is JSON; anything that is not JSON is sent as a string.

use herald_sdk::Publisher;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let channel = args.next().unwrap_or_else(|| "orders".to_owned());
    let payload = args
        .next()
        .unwrap_or_else(|| r#"{"hello": "world"}"#.to_owned());
    let payload: serde_json::Value =
        serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload));

    let publisher = Publisher::from_env()?;
    let channel = publisher.build_channel(&channel)?;
    let id = channel.publish_message(&payload).await?;
    println!("published {id} to {}", channel.name());
    Ok(())
}
