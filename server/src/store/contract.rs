//! The contract every [`Store`] implementation must meet, as one test routine that each
//! backend's tests call.

use herald_protocol::{ApiKeyId, ApiKeyScope, ProjectId};
use time::OffsetDateTime;

use super::{ApiKeyRecord, ProjectRecord, SecretHash, SigningSecret, Store, StoreError};

/// A project and one of its keys, with ids derived from `tag`.
pub(crate) fn sample(tag: &str) -> (ProjectRecord, ApiKeyRecord) {
    let project = ProjectRecord {
        id: ProjectId::parse(&format!("p-{tag}")).expect("valid id"),
        name: format!("Project {tag}"),
        created_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid time"),
        signing_secret: SigningSecret::generate(),
        history: herald_protocol::HistorySettings::default(),
    };
    let key = key_for(&project, &hex::encode(rand::random::<[u8; 8]>()));
    (project, key)
}

pub(crate) fn key_for(project: &ProjectRecord, id_hex: &str) -> ApiKeyRecord {
    ApiKeyRecord {
        id: ApiKeyId::parse(id_hex).expect("valid key id"),
        project_id: project.id.clone(),
        name: "publisher".into(),
        scopes: vec![ApiKeyScope::PublishEvent, ApiKeyScope::SignToken],
        created_at: OffsetDateTime::from_unix_timestamp(1_700_000_100).expect("valid time"),
        expires_at: None,
        secret_hash: SecretHash(rand::random()),
    }
}

/// Runs the whole contract against `store`, which must start empty of the ids used here.
pub(crate) async fn run(store: &dyn Store) {
    let (a, key_a) = sample("contract-a");
    let (b, key_b) = sample("contract-b");

    // Projects: create, conflict, read, list.
    store.create_project(&a).await.expect("create a");
    store.create_project(&b).await.expect("create b");
    assert!(matches!(
        store.create_project(&a).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.project(&a.id).await.expect("read"), Some(a.clone()));

    // History settings: replaced, kept across reads; an unknown project is refused.
    let history = herald_protocol::HistorySettings {
        size: 7,
        ttl_secs: 30,
    };
    store
        .set_history(&b.id, history)
        .await
        .expect("set history");
    let read_b = store.project(&b.id).await.expect("read").expect("exists");
    assert_eq!(read_b.history, history);
    assert_eq!(read_b.signing_secret, b.signing_secret);
    store
        .set_history(&b.id, b.history)
        .await
        .expect("set history back");
    assert!(matches!(
        store
            .set_history(&ProjectId::parse("p-none").expect("valid"), history)
            .await,
        Err(StoreError::ProjectNotFound)
    ));
    let ids: Vec<_> = store
        .projects()
        .await
        .expect("list")
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert!(ids.contains(&a.id) && ids.contains(&b.id));

    // Keys: create, conflict, unknown project, read, list per project.
    store.create_api_key(&key_a).await.expect("create key a");
    store.create_api_key(&key_b).await.expect("create key b");
    assert!(matches!(
        store.create_api_key(&key_a).await,
        Err(StoreError::Conflict)
    ));
    let mut orphan = key_a.clone();
    orphan.id = ApiKeyId::parse("00000000000000ff").expect("valid");
    orphan.project_id = ProjectId::parse("p-contract-missing").expect("valid");
    assert!(matches!(
        store.create_api_key(&orphan).await,
        Err(StoreError::ProjectNotFound)
    ));
    assert_eq!(
        store.api_key(&key_a.id).await.expect("read"),
        Some(key_a.clone())
    );
    assert_eq!(
        store.api_keys(&a.id).await.expect("list"),
        vec![key_a.clone()]
    );

    // Updates replace the record, only within its project.
    let mut narrowed = key_a.clone();
    narrowed.scopes = vec![ApiKeyScope::PublishEvent];
    assert!(store.update_api_key(&narrowed).await.expect("update"));
    assert_eq!(
        store.api_key(&key_a.id).await.expect("read"),
        Some(narrowed.clone())
    );
    let mut moved = narrowed.clone();
    moved.project_id = b.id.clone();
    assert!(!store.update_api_key(&moved).await.expect("update"));
    let mut unknown = narrowed.clone();
    unknown.id = ApiKeyId::parse("00000000000000fe").expect("valid");
    assert!(!store.update_api_key(&unknown).await.expect("update"));
    let key_a = narrowed;

    // Every key of every project is listed once.
    let all: Vec<_> = store
        .all_api_keys()
        .await
        .expect("list all")
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert!(all.contains(&key_a.id) && all.contains(&key_b.id));
    assert_eq!(all.iter().filter(|k| **k == key_a.id).count(), 1);

    // A key is deleted only through its own project.
    assert_eq!(
        store
            .delete_api_key(&b.id, &key_a.id)
            .await
            .expect("delete"),
        None
    );
    assert_eq!(
        store
            .delete_api_key(&a.id, &key_a.id)
            .await
            .expect("delete"),
        Some(key_a.clone())
    );
    assert_eq!(store.api_key(&key_a.id).await.expect("read"), None);
    assert_eq!(
        store
            .delete_api_key(&a.id, &key_a.id)
            .await
            .expect("delete"),
        None
    );

    // Rotation replaces the secret and nothing else.
    let new_secret = SigningSecret::generate();
    store
        .rotate_secret(&a.id, new_secret.clone())
        .await
        .expect("rotate");
    let rotated = store.project(&a.id).await.expect("read").expect("exists");
    assert_eq!(rotated.signing_secret, new_secret);
    assert_eq!(rotated.name, a.name);
    let missing = ProjectId::parse("p-contract-missing").expect("valid");
    assert!(matches!(
        store
            .rotate_secret(&missing, SigningSecret::generate())
            .await,
        Err(StoreError::ProjectNotFound)
    ));

    // Deleting a project deletes its keys and reports them.
    let deleted = store
        .delete_project(&b.id)
        .await
        .expect("delete")
        .expect("existed");
    assert_eq!(deleted, vec![key_b.clone()]);
    assert_eq!(store.project(&b.id).await.expect("read"), None);
    assert_eq!(store.api_key(&key_b.id).await.expect("read"), None);
    assert_eq!(store.delete_project(&b.id).await.expect("delete"), None);
    store.delete_project(&a.id).await.expect("cleanup");
}
