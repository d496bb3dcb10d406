//! The contract every [`WebhookBackend`] meets (embedded: redb; Redis). The clock is an
//! argument of the outbox calls, so leases and due times are tested without sleeping.

use herald_protocol::ProjectId;
use herald_protocol::webhook::{
    DeliveryStatus, MAX_LISTED_DELIVERIES, WEBHOOK_ID_RANDOM_CHARS, WebhookEventType, WebhookId,
    WebhookUrl,
};
use time::OffsetDateTime;

use super::backend::{
    DeliveryRecord, WebhookBackend, WebhookRecord, WebhookSecret, WebhookStoreError,
};

fn webhook(project: &ProjectId) -> WebhookRecord {
    WebhookRecord {
        id: WebhookId::generate(rand::random::<[u8; WEBHOOK_ID_RANDOM_CHARS]>()),
        project_id: project.clone(),
        url: WebhookUrl::parse("http://127.0.0.1:9/hook").expect("valid"),
        events: vec![WebhookEventType::ChannelOccupied],
        enabled: true,
        created_at: OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("valid"),
        secret: WebhookSecret::generate(),
        previous: None,
    }
}

fn delivery(w: &WebhookRecord, due_ms: i64) -> DeliveryRecord {
    DeliveryRecord::new(
        w,
        WebhookEventType::ChannelOccupied,
        "{}".into(),
        OffsetDateTime::now_utc(),
        due_ms,
    )
}

/// Runs the contract; `reopen` gives a second handle on the same storage (a restarted
/// process, or another instance).
pub(crate) async fn run(b: &dyn WebhookBackend, reopen: &dyn WebhookBackend) {
    let p =
        ProjectId::parse(&format!("wh-{}", hex::encode(rand::random::<[u8; 4]>()))).expect("valid");
    let other =
        ProjectId::parse(&format!("wh-{}", hex::encode(rand::random::<[u8; 4]>()))).expect("valid");

    // Endpoints: CRUD, the cap, projects kept apart.
    let w = webhook(&p);
    b.create_webhook(&w, 2).await.expect("create");
    assert_eq!(b.webhooks(&p).await.expect("list"), vec![w.clone()]);
    assert_eq!(b.webhook(&p, &w.id).await.expect("get"), Some(w.clone()));
    assert_eq!(
        b.webhook(&other, &w.id).await.expect("get"),
        None,
        "another project's"
    );
    let w2 = webhook(&p);
    b.create_webhook(&w2, 2).await.expect("second");
    assert!(matches!(
        b.create_webhook(&webhook(&p), 2).await,
        Err(WebhookStoreError::TooMany)
    ));
    let mut changed = w2.clone();
    changed.enabled = false;
    assert!(b.update_webhook(&changed).await.expect("update"));
    assert_eq!(b.webhook(&p, &w2.id).await.expect("get"), Some(changed));
    assert!(
        !b.update_webhook(&webhook(&other)).await.expect("update"),
        "no such webhook"
    );
    assert!(b.delete_webhook(&p, &w2.id).await.expect("delete"));
    assert!(!b.delete_webhook(&p, &w2.id).await.expect("delete"));

    // The outbox: claim once, lease, due order, busy endpoints, one per endpoint per claim.
    let t = 1_000_000_000;
    let d1 = delivery(&w, t);
    let d2 = delivery(&w, t + 1);
    assert_eq!(
        b.enqueue(&[d1.clone(), d2.clone()], 10)
            .await
            .expect("enqueue"),
        vec![true, true]
    );
    assert!(
        b.claim(t - 1, 1000, 10, &[])
            .await
            .expect("claim")
            .is_empty(),
        "not due yet"
    );
    assert!(
        b.claim(t + 5, 1000, 10, std::slice::from_ref(&w.id))
            .await
            .expect("claim")
            .is_empty(),
        "busy"
    );
    let got = b.claim(t + 5, 1000, 10, &[]).await.expect("claim");
    assert_eq!(
        got.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        vec![d1.id.clone()],
        "oldest, one per endpoint"
    );
    let got2 = reopen.claim(t + 5, 1000, 10, &[]).await.expect("claim");
    assert_eq!(
        got2.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        vec![d2.id.clone()]
    );
    assert!(
        b.claim(t + 500, 1000, 10, &[])
            .await
            .expect("claim")
            .is_empty(),
        "both leased"
    );
    // A lease that runs out (the worker died): claimable again, by anyone.
    let again = reopen.claim(t + 1006, 1000, 10, &[]).await.expect("claim");
    assert_eq!(again.len(), 1);
    // An attempt written back: pending later, then delivered.
    let mut a = again[0].clone();
    a.series_attempts = 1;
    a.due_ms = Some(t + 5000);
    b.record_attempt(&a).await.expect("record");
    // The other one was due earlier (its lease ran out first): one per endpoint, due order.
    let first = b.claim(t + 5000, 1000, 10, &[]).await.expect("claim");
    assert_eq!(first.len(), 1);
    assert_ne!(first[0].id, a.id);
    let mut failed = first[0].clone();
    failed.status = DeliveryStatus::Failed;
    failed.due_ms = None;
    b.record_attempt(&failed).await.expect("record");
    let next = b.claim(t + 5000, 1000, 10, &[]).await.expect("claim");
    assert!(
        next.iter().any(|d| d.id == a.id),
        "due again at its new time"
    );
    let mut done = a.clone();
    done.status = DeliveryStatus::Delivered;
    done.due_ms = None;
    b.record_attempt(&done).await.expect("record");
    assert!(
        b.claim(t + 100_000, 1000, 10, &[])
            .await
            .expect("claim")
            .is_empty(),
        "both finished"
    );
    let log = b.deliveries(&w.id, 10).await.expect("log");
    assert_eq!(
        log.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        vec![d2.id.clone(), d1.id.clone()],
        "newest first"
    );
    assert_eq!(
        b.delivery(&w.id, &done.id)
            .await
            .expect("get")
            .map(|d| d.status),
        Some(DeliveryStatus::Delivered)
    );
    assert_eq!(
        b.delivery(&webhook(&p).id, &done.id).await.expect("get"),
        None,
        "another webhook's"
    );
    // A failed one queued again by hand.
    let mut retry = failed.clone();
    retry.status = DeliveryStatus::Pending;
    retry.due_ms = Some(t);
    b.record_attempt(&retry).await.expect("requeue");
    assert_eq!(
        b.claim(t + 200_000, 1000, 10, &[])
            .await
            .expect("claim")
            .len(),
        1
    );
    b.discard(&retry).await.expect("discard");
    assert!(
        b.claim(t + 300_000, 1000, 10, &[])
            .await
            .expect("claim")
            .is_empty()
    );

    // max_pending refuses, finishing frees a place.
    let full: Vec<DeliveryRecord> = (0..3).map(|i| delivery(&w, t + i)).collect();
    assert_eq!(
        b.enqueue(&full, 2).await.expect("enqueue"),
        vec![true, true, false]
    );
    let c = b.claim(t + 10, 1000, 10, &[]).await.expect("claim");
    let mut finished = c[0].clone();
    finished.status = DeliveryStatus::Delivered;
    b.record_attempt(&finished).await.expect("record");
    assert_eq!(
        b.enqueue(&[delivery(&w, t)], 2).await.expect("enqueue"),
        vec![true]
    );

    // The log keeps the newest MAX_LISTED_DELIVERIES.
    let many: Vec<DeliveryRecord> = (0..MAX_LISTED_DELIVERIES + 5)
        .map(|_| delivery(&w, t))
        .collect();
    b.enqueue(&many, usize::MAX).await.expect("enqueue");
    let log = b.deliveries(&w.id, usize::MAX).await.expect("log");
    assert_eq!(log.len(), MAX_LISTED_DELIVERIES);
    assert_eq!(log[0].id, many.last().expect("some").id);

    // Enqueueing the same delivery again (a re-sent command) adds it once.
    let once = delivery(&w, t);
    assert_eq!(
        b.enqueue(std::slice::from_ref(&once), usize::MAX)
            .await
            .expect("enqueue"),
        vec![true]
    );
    b.enqueue(std::slice::from_ref(&once), usize::MAX)
        .await
        .expect("enqueue again");
    let log = b.deliveries(&w.id, usize::MAX).await.expect("log");
    assert_eq!(
        log.iter().filter(|d| d.id == once.id).count(),
        1,
        "listed once"
    );

    // A project may be named like an outbox key.
    let pending = ProjectId::parse("pending").expect("valid");
    let wp = webhook(&pending);
    b.create_webhook(&wp, 10)
        .await
        .expect("create in project pending");
    assert_eq!(
        b.enqueue(&[delivery(&wp, t)], 10).await.expect("enqueue"),
        vec![true]
    );
    assert!(b.delete_webhook(&pending, &wp.id).await.expect("delete"));

    // Marks: once.
    let mark = format!("m-{}", hex::encode(rand::random::<[u8; 4]>()));
    assert!(b.mark_once(&mark, 60).await.expect("mark"));
    assert!(!reopen.mark_once(&mark, 60).await.expect("mark"));

    // A deleted project's endpoints go; its pending deliveries are left to be discarded.
    b.delete_project_webhooks(&p).await.expect("delete project");
    assert!(b.webhooks(&p).await.expect("list").is_empty());
}
