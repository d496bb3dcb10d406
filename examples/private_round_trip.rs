//! A private-channel round trip: a subscriber whose token provider signs tokens with a
//! publisher, listens to a private channel, receives one event published to it, and closes.
//!
//! Run with (see `publish.rs` for starting a server and creating project `demo` and a key;
//! the key needs both scopes, `publish_event` and `sign_token`, which is the CLI's default):
//!
//! ```text
//! HERALD_URL=http://127.0.0.1:8080 HERALD_API_KEY=hk_... \
//!     cargo run -p herald-sdk --example private_round_trip -- demo
//! ```
//!
//! In a real system the token provider runs in the client and asks your backend, which
//! checks who the user is before signing; here both ends live in one process.

use std::time::Duration;

use herald_sdk::{ChannelName, Publisher, Subscriber, SubscriberEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let project = std::env::args().nth(1).unwrap_or_else(|| "demo".to_owned());
    let url = std::env::var("HERALD_URL")?;
    let publisher = Publisher::from_env()?;

    let signer = publisher.clone();
    let subscriber = Subscriber::builder(&url, &project)
        .token_provider(move |channel: ChannelName| {
            let signer = signer.clone();
            async move {
                let token = signer
                    .build_private_channel(&channel)?
                    .get_client_auth_token()
                    .await?;
                println!(
                    "signed a token for {channel}, valid until {}",
                    token.expires_at
                );
                Ok::<_, herald_sdk::Error>(token.token)
            }
        })
        .connect()
        .await?;

    let name = format!("private-demo-{}", std::process::id());
    subscriber.listen(&name).await?;
    println!("listening to {name}");

    let inbox = publisher.build_private_channel(&name)?;
    let id = inbox
        .publish_message(&serde_json::json!({"text": "hello, private world"}))
        .await?;
    println!("published {id}");

    let received = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = subscriber.next().await {
            if let SubscriberEvent::Event(e) = event
                && e.id.as_deref() == Some(id.as_str())
            {
                return Some(e);
            }
        }
        None
    })
    .await?;
    match received {
        Some(e) => println!("received {} on {}: {}", id, e.channel_name, e.payload),
        None => anyhow::bail!("the subscriber closed before the event arrived"),
    }
    subscriber.close().await;
    Ok(())
}
