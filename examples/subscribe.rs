//! Listens to public channels of a project and prints what arrives, until Ctrl-C.
//!
//! Run with (see `publish.rs` for starting a server and creating project `demo`):
//!
//! ```text
//! HERALD_URL=http://127.0.0.1:8080 \
//!     cargo run -p herald-sdk --example subscribe -- demo orders news
//! ```
//!
//! then publish from another terminal with the `publish` example. Restart the server to watch
//! the subscriber reconnect and listen again.

use herald_sdk::{Subscriber, SubscriberEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("HERALD_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let mut args = std::env::args().skip(1);
    let project = args.next().unwrap_or_else(|| "demo".to_owned());
    let mut channels: Vec<String> = args.collect();
    if channels.is_empty() {
        channels.push("orders".to_owned());
    }

    let subscriber = Subscriber::builder(&url, &project).connect().await?;
    for channel in &channels {
        subscriber.listen(channel).await?;
        println!("listening to {channel}");
    }

    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = subscriber.next() => match event {
                Some(SubscriberEvent::Event(e)) => {
                    println!("{} [{}] {}", e.channel_name, e.id.unwrap_or_default(), e.payload);
                }
                Some(SubscriberEvent::System(m)) => println!("system {:?}: {}", m.code, m.message),
                Some(SubscriberEvent::State(s)) => println!("connection: {s:?}"),
                Some(SubscriberEvent::RelistenFailed { channel, error }) => {
                    println!("could not listen to {channel} again: {error}");
                }
                Some(other) => println!("{other:?}"),
                None => break,
            },
        }
    }
    subscriber.close().await;
    Ok(())
}
