//! The contract every [`History`] implementation must meet, as one test routine that each
//! backend's tests call.

use herald_protocol::history::{ChannelOffset, HistorySettings};
use herald_protocol::{ChannelName, ProjectId, RoomName};

use super::History;

fn room(tag: &str, channel: &str) -> RoomName {
    RoomName::channel(
        &ProjectId::parse(&format!("hc-{tag}")).expect("valid id"),
        &ChannelName::parse(channel).expect("valid channel"),
    )
}

/// Runs the whole contract against `history`, which must start empty.
pub(crate) async fn run(history: &dyn History) {
    let settings = HistorySettings {
        size: 5,
        ttl_secs: 60,
    };
    let a = room("a", "orders");
    let b = room("a", "other");

    // Nothing yet: no epoch, offset 0.
    let empty = history
        .read(&a, settings, ChannelOffset(0), 10)
        .await
        .expect("read");
    assert_eq!(
        (empty.epoch, empty.top, empty.events.len()),
        (None, ChannelOffset(0), 0)
    );
    assert_eq!(
        history.head(&a, settings).await.expect("head"),
        (None, ChannelOffset(0))
    );

    // Offsets start at 1 and grow by one per event, under one epoch, per channel.
    let mut epoch = None;
    for i in 1..=3u64 {
        let p = history
            .append(&a, settings, &format!("m{i}"), &format!("{{\"n\":{i}}}"))
            .await
            .expect("append");
        assert_eq!(p.offset, ChannelOffset(i));
        assert_eq!(epoch.get_or_insert(p.epoch.clone()), &p.epoch);
    }
    let other = history
        .append(&b, settings, "x", "1")
        .await
        .expect("append");
    assert_eq!(other.offset, ChannelOffset(1), "offsets are per channel");
    // The head: where a socket joining now starts.
    assert_eq!(
        history.head(&a, settings).await.expect("head"),
        (epoch.clone(), ChannelOffset(3))
    );

    // Read after an offset: exactly the later events, oldest first, payload byte for byte.
    let slice = history
        .read(&a, settings, ChannelOffset(1), 10)
        .await
        .expect("read");
    assert_eq!(slice.epoch, epoch);
    assert_eq!(slice.top, ChannelOffset(3));
    assert_eq!(slice.first, Some(ChannelOffset(1)));
    let got: Vec<(u64, &str, &str)> = slice
        .events
        .iter()
        .map(|e| (e.offset.get(), e.id.as_str(), e.payload.as_str()))
        .collect();
    assert_eq!(got, vec![(2, "m2", "{\"n\":2}"), (3, "m3", "{\"n\":3}")]);

    // The limit pages.
    let page = history
        .read(&a, settings, ChannelOffset(0), 2)
        .await
        .expect("read");
    let offsets: Vec<u64> = page.events.iter().map(|e| e.offset.get()).collect();
    assert_eq!(offsets, vec![1, 2]);

    // Trimmed to `size`: the oldest go, offsets continue.
    for i in 4..=8u64 {
        let p = history
            .append(&a, settings, &format!("t{i}"), "0")
            .await
            .expect("append");
        assert_eq!(p.offset, ChannelOffset(i));
    }
    let trimmed = history
        .read(&a, settings, ChannelOffset(0), 100)
        .await
        .expect("read");
    let offsets: Vec<u64> = trimmed.events.iter().map(|e| e.offset.get()).collect();
    assert_eq!(offsets, vec![4, 5, 6, 7, 8]);
    assert_eq!(trimmed.first, Some(ChannelOffset(4)));
    assert_eq!(trimmed.epoch, epoch, "trimming keeps the epoch");

    // Expired by `ttlSecs`: not returned any more, the stream's epoch and offset remain.
    let short = HistorySettings {
        size: 5,
        ttl_secs: 1,
    };
    let c = room("a", "short");
    let first = history.append(&c, short, "m1", "1").await.expect("append");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let expired = history
        .read(&c, short, ChannelOffset(0), 10)
        .await
        .expect("read");
    assert!(expired.events.is_empty(), "{expired:?}");
    assert_eq!(expired.first, None);
    let next = history.append(&c, short, "m2", "2").await.expect("append");
    assert_eq!(next.offset, ChannelOffset(2));
    assert_eq!(next.epoch, first.epoch);

    // A position read starts an empty stream: offset 0 under an epoch the first event keeps;
    // later it reports the latest offset, and reads see the same epoch.
    let d = room("a", "quiet");
    let start = history.position(&d).await.expect("position");
    assert_eq!(start.offset, ChannelOffset(0));
    assert_eq!(history.position(&d).await.expect("position"), start);
    let seen = history
        .read(&d, settings, ChannelOffset(0), 10)
        .await
        .expect("read");
    assert_eq!(
        (seen.epoch, seen.top),
        (Some(start.epoch.clone()), ChannelOffset(0))
    );
    let one = history
        .append(&d, settings, "q1", "1")
        .await
        .expect("append");
    assert_eq!((one.offset, &one.epoch), (ChannelOffset(1), &start.epoch));
    let now = history.position(&a).await.expect("position");
    assert_eq!(
        (now.offset, now.epoch),
        (ChannelOffset(8), epoch.expect("epoch"))
    );
}
