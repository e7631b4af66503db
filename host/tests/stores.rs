//! One conformance suite per store trait, run against the embedded and the
//! production backend alike: memory and Redis, SQLite and PostgreSQL (real
//! servers, started by `just test`).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{Timelike as _, Utc};
use lambda_host::digest::Digest;
use lambda_host::store::memory::{MemoryRateLimiter, MemoryResultCache, MemorySessions};
use lambda_host::store::postgres::PgStore;
use lambda_host::store::recorded::RecordedSessions;
use lambda_host::store::redis::RedisStore;
use lambda_host::store::resilient::ResilientSessions;
use lambda_host::store::sqlite::SqliteStore;
use lambda_host::store::{
    ErrorLog, FunctionFilter, FunctionKind, FunctionRecord, Insert, KeyValueStore, KvSet,
    LogRecord, LogStore, RateDecision, RateLimiter, Registry, RequestLog, ResultCache, Session,
    SessionRecords, SessionStore, TierState, TierUp,
};
use std::sync::Arc;

use lambda_host::integrity::IntegrityKey;
use lambda_host::toolchain::{ArtifactStore, Artifacts, DiskArtifacts, SealedArtifact};
use serde_json::json;

use crate::helpers::{test_database_url, test_redis_url};

fn redis() -> RedisStore {
    RedisStore::connect(
        &test_redis_url(),
        &format!("test-{}:", uuid::Uuid::new_v4().simple()),
    )
    .unwrap()
}

async fn postgres() -> PgStore {
    let store = PgStore::connect_lazy(&test_database_url().await).unwrap();
    store.migrate().await.unwrap();
    store
}

async fn sqlite(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("lambda.db"))
        .await
        .unwrap()
}

fn session(id: &str, ttl: Duration) -> Session {
    let now = Utc::now();
    Session {
        request_id: id.to_owned(),
        language_title: "rust-data_validator".parse().unwrap(),
        owner: "alice".into(),
        build_digest: Digest::of(b"b"),
        component_digest: Digest::of(b"c"),
        context: json!({ "timeout_ms": 1000, "nested": { "ü": [1, 2] } }),
        timeout_ms: 1000,
        retain_session: true,
        // Not the default: a record that drops it fails the round trip.
        warm_instances: true,
        created_at: now,
        expires_at: now + ttl,
        execution_count: 0,
        last_executed_at: None,
    }
}

async fn session_conformance(store: &dyn SessionStore) {
    let id = uuid::Uuid::new_v4().to_string();
    let first = session(&id, Duration::from_secs(60));
    assert_eq!(
        store.insert_new(&first, NO_QUOTA).await.unwrap(),
        Insert::Inserted
    );
    assert_eq!(
        store
            .insert_new(&session(&id, Duration::from_secs(60)), NO_QUOTA)
            .await
            .unwrap(),
        Insert::IdTaken,
        "an id is used once"
    );
    // Timestamps survive at the precision the API shows (milliseconds).
    let read = store.get(&id).await.unwrap().unwrap();
    assert_eq!(read.request_id, first.request_id);
    assert_eq!(read.context, first.context);
    assert_eq!(
        read.expires_at.timestamp_millis(),
        first.expires_at.timestamp_millis()
    );

    // Concurrent executions of one session each count, exactly once: the
    // counts handed back are 1..=N, every one of them.
    const EXECUTIONS: u64 = 40;
    let at = Utc::now();
    let counted =
        futures::future::join_all((0..EXECUTIONS).map(|_| store.record_execution(&read, at))).await;
    let mut counts: Vec<u64> = counted
        .into_iter()
        .map(|c| c.unwrap().expect("a live session").execution_count)
        .collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=EXECUTIONS).collect::<Vec<_>>());
    let read = store.get(&id).await.unwrap().unwrap();
    assert_eq!(read.execution_count, EXECUTIONS);
    assert_eq!(
        read.last_executed_at.map(|t| t.timestamp_millis()),
        Some(at.timestamp_millis())
    );
    assert_eq!(
        read.context, first.context,
        "counting leaves the rest alone"
    );
    let before = store.active_count().await.unwrap();
    assert!(before >= 1);

    store.remove(&read).await.unwrap();
    assert_eq!(store.get(&id).await.unwrap(), None);
    assert_eq!(store.active_count().await.unwrap(), before - 1);
    // Counting does not bring a removed session back.
    assert_eq!(
        store.record_execution(&read, Utc::now()).await.unwrap(),
        None
    );
    assert_eq!(store.get(&id).await.unwrap(), None);

    let short = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        store
            .insert_new(&session(&short, Duration::from_millis(300)), NO_QUOTA)
            .await
            .unwrap(),
        Insert::Inserted
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        store.get(&short).await.unwrap(),
        None,
        "an expired session is gone"
    );
    assert!(store.health().await.is_ok());
    quota_conformance(store).await;
}

const NO_QUOTA: u64 = u64::MAX;

/// An owner's live sessions weigh at most its quota: one more is refused,
/// other owners are not affected, and what leaves (removed, expired)
/// makes room again.
async fn quota_conformance(store: &dyn SessionStore) {
    let owner = format!("heavy-{}", uuid::Uuid::new_v4().simple());
    let heavy = |ttl: Duration| {
        let mut s = session(&uuid::Uuid::new_v4().to_string(), ttl);
        s.owner = owner.clone();
        s.context = json!({ "blob": "x".repeat(10_000) });
        s
    };
    let weight = heavy(Duration::from_secs(60)).weight();
    let quota = weight * 3;
    let mut kept = Vec::new();
    for _ in 0..2 {
        let s = heavy(Duration::from_secs(60));
        assert_eq!(store.insert_new(&s, quota).await.unwrap(), Insert::Inserted);
        kept.push(s);
    }
    let short = heavy(Duration::from_millis(300));
    assert_eq!(
        store.insert_new(&short, quota).await.unwrap(),
        Insert::Inserted
    );
    assert_eq!(
        store
            .insert_new(&heavy(Duration::from_secs(60)), quota)
            .await
            .unwrap(),
        Insert::OverQuota {
            used_bytes: weight * 3
        }
    );
    // Concurrent inserts cannot overshoot together.
    let racing: Vec<Session> = (0..8).map(|_| heavy(Duration::from_secs(60))).collect();
    let outcomes =
        futures::future::join_all(racing.iter().map(|s| store.insert_new(s, quota))).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Ok(Insert::OverQuota { .. })))
    );
    // Another owner is not affected.
    let other = session(&uuid::Uuid::new_v4().to_string(), Duration::from_secs(60));
    assert_eq!(
        store.insert_new(&other, quota).await.unwrap(),
        Insert::Inserted
    );
    // Removing one makes room for one.
    store.remove(&kept[0]).await.unwrap();
    assert_eq!(
        store
            .insert_new(&heavy(Duration::from_secs(60)), quota)
            .await
            .unwrap(),
        Insert::Inserted
    );
    // So does one that expires.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        store
            .insert_new(&heavy(Duration::from_secs(60)), quota)
            .await
            .unwrap(),
        Insert::Inserted
    );
}

async fn cache_conformance(cache: &dyn ResultCache) {
    let key = format!("result:{}", uuid::Uuid::new_v4());
    assert_eq!(cache.get(&key).await.unwrap(), None);
    let value = json!({ "result": [1, "två", null, { "big": 9007199254740991_i64 }] });
    cache
        .put(&key, &value, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), Some(value));
    let short = format!("result:{}", uuid::Uuid::new_v4());
    cache
        .put(&short, &json!(1), Duration::from_millis(200))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cache.get(&short).await.unwrap(), None);
}

async fn limiter_conformance(limiter: &dyn RateLimiter) {
    let key = format!("execute:sub:{}", uuid::Uuid::new_v4());
    let window = Duration::from_secs(60);
    for _ in 0..5 {
        assert_eq!(
            limiter.check(&key, 5, window).await.unwrap(),
            RateDecision::Allowed
        );
    }
    match limiter.check(&key, 5, window).await.unwrap() {
        RateDecision::Limited { retry_after_secs } => assert!((1..=60).contains(&retry_after_secs)),
        RateDecision::Allowed => panic!("the sixth request passed a limit of five"),
    }
    assert_eq!(
        limiter
            .check(&format!("{key}-other"), 5, window)
            .await
            .unwrap(),
        RateDecision::Allowed
    );
}

fn function(
    name: &str,
    kind: FunctionKind,
    owner: Option<&str>,
    script: Option<&str>,
) -> FunctionRecord {
    let (_, title) = name.split_once('-').unwrap();
    let now = Utc::now();
    FunctionRecord {
        language_title: name.parse().unwrap(),
        kind,
        owner: owner.map(str::to_owned),
        description: format!("the {title} function"),
        script_content: script.map(str::to_owned),
        build_digest: Digest::of(name.as_bytes()),
        component_digest: Digest::of(title.as_bytes()),
        component_size: 1234,
        tier: TierState::Compiled,
        // Not the default: a store that drops the column fails the round trip.
        warm_instances: true,
        capabilities: Some(lambda_host::runtime::policy::Declared {
            hosts: vec!["api.example.com:8080".into()],
            key_value: true,
            variables: vec!["region".into()],
        }),
        compile_options: json!({ "optimization_level": "release" }),
        schema: json!({ "params": { "type": "object" } }),
        examples: json!([{ "params": {}, "result": 1 }]),
        created_at: now,
        updated_at: now,
    }
}

/// A function version that started on an interpreter gets its tier 1
/// recorded once, and only while it is still that version.
async fn tier_conformance(registry: &dyn Registry) {
    let mut record = function(
        "python-tiered",
        FunctionKind::Dynamic,
        Some("alice"),
        Some("x = 1"),
    );
    record.tier = TierState::Pending;
    assert!(registry.upsert(&record).await.unwrap());
    let name = &record.language_title;
    let stored = registry.get(name).await.unwrap().unwrap();
    assert_eq!(stored.tier, TierState::Pending);

    let compiled = TierUp::Compiled {
        component_digest: Digest::of(b"tier 1"),
        component_size: 99,
    };
    // Another version's outcome changes nothing.
    assert!(
        !registry
            .finish_tier_up(name, Digest::of(b"older"), &compiled)
            .await
            .unwrap()
    );
    assert!(
        registry
            .finish_tier_up(name, record.build_digest, &compiled)
            .await
            .unwrap()
    );
    let stored = registry.get(name).await.unwrap().unwrap();
    assert_eq!(stored.tier, TierState::Compiled);
    assert_eq!(stored.component_digest, Digest::of(b"tier 1"));
    assert_eq!(stored.component_size, 99);
    // Recorded once: a late failure (another replica's) does not undo it.
    let failed = TierUp::Failed("the build exceeded its time".to_owned());
    assert!(
        !registry
            .finish_tier_up(name, record.build_digest, &failed)
            .await
            .unwrap()
    );
    assert!(
        !registry
            .finish_tier_up(name, record.build_digest, &compiled)
            .await
            .unwrap()
    );

    // A new version starts pending again; its failure keeps the reason,
    // whatever characters it holds.
    record.build_digest = Digest::of(b"v2");
    record.script_content = Some("x = 2".to_owned());
    assert!(registry.upsert(&record).await.unwrap());
    let reason = TierUp::Failed("it's 'quoted' -- and long: ".repeat(500));
    assert!(
        registry
            .finish_tier_up(name, record.build_digest, &reason)
            .await
            .unwrap()
    );
    let stored = registry.get(name).await.unwrap().unwrap();
    let TierUp::Failed(expected) = reason else {
        unreachable!()
    };
    assert_eq!(stored.tier, TierState::Failed(expected));
    assert_eq!(stored.tier.error().map(str::len), Some(27 * 500));
}

async fn registry_conformance(registry: &dyn Registry) {
    registry
        .upsert(&function(
            "nodejs-calculator",
            FunctionKind::Predefined,
            None,
            None,
        ))
        .await
        .unwrap();
    registry
        .upsert(&function(
            "python-a",
            FunctionKind::Dynamic,
            Some("alice"),
            Some("def handler(e): ..."),
        ))
        .await
        .unwrap();
    registry
        .upsert(&function(
            "rust-b",
            FunctionKind::Dynamic,
            Some("bob"),
            Some("pub fn handler() {}"),
        ))
        .await
        .unwrap();

    let read = registry
        .get(&"python-a".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.kind, FunctionKind::Dynamic);
    assert_eq!(read.owner.as_deref(), Some("alice"));
    assert_eq!(read.script_content.as_deref(), Some("def handler(e): ..."));
    assert_eq!(read.build_digest, Digest::of(b"python-a"));
    assert_eq!(read.schema, json!({ "params": { "type": "object" } }));
    assert_eq!(read.component_size, 1234);
    assert_eq!(
        read.capabilities,
        function("python-a", FunctionKind::Dynamic, None, None).capabilities
    );
    assert_eq!(
        registry.get(&"rust-none".parse().unwrap()).await.unwrap(),
        None
    );

    // Another user's registration of the name writes nothing, whoever
    // checked what first: the write itself is conditional.
    let taken = function(
        "python-a",
        FunctionKind::Dynamic,
        Some("mallory"),
        Some("def handler(e): 'mine now'"),
    );
    assert!(!registry.upsert(&taken).await.unwrap());
    let unchanged = registry
        .get(&"python-a".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(unchanged.owner.as_deref(), Some("alice"));
    assert_eq!(
        unchanged.script_content.as_deref(),
        Some("def handler(e): ...")
    );
    // Nor can a dynamic function replace a predefined one.
    assert!(
        !registry
            .upsert(&function(
                "nodejs-calculator",
                FunctionKind::Dynamic,
                Some("mallory"),
                Some("x"),
            ))
            .await
            .unwrap()
    );
    assert_eq!(
        registry
            .get(&"nodejs-calculator".parse().unwrap())
            .await
            .unwrap()
            .unwrap()
            .kind,
        FunctionKind::Predefined
    );

    // Re-registering keeps the creation time and replaces the rest.
    let mut newer = function(
        "python-a",
        FunctionKind::Dynamic,
        Some("alice"),
        Some("def handler(e): 2"),
    );
    newer.created_at = Utc::now() + chrono::Duration::days(1);
    assert!(registry.upsert(&newer).await.unwrap());
    let again = registry
        .get(&"python-a".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.script_content.as_deref(), Some("def handler(e): 2"));
    assert_eq!(
        again.created_at.timestamp_millis(),
        read.created_at.timestamp_millis()
    );

    let page = |language: Option<&str>, owner: Option<&str>, kind, page, per_page| FunctionFilter {
        language: language.map(str::to_owned),
        owner: owner.map(str::to_owned),
        kind,
        page,
        per_page,
    };
    let (total, all) = registry.list(&page(None, None, None, 1, 20)).await.unwrap();
    assert_eq!(total, 3);
    let names: Vec<_> = all.iter().map(|f| f.language_title.to_string()).collect();
    assert_eq!(names, ["nodejs-calculator", "python-a", "rust-b"]);
    let (total, second) = registry.list(&page(None, None, None, 2, 2)).await.unwrap();
    assert_eq!(
        (
            total,
            second.len(),
            second[0].language_title.to_string().as_str()
        ),
        (3, 1, "rust-b")
    );
    let (total, dynamic) = registry
        .list(&page(None, None, Some(FunctionKind::Dynamic), 1, 20))
        .await
        .unwrap();
    assert_eq!((total, dynamic.len()), (2, 2));
    let (total, bobs) = registry
        .list(&page(None, Some("bob"), None, 1, 20))
        .await
        .unwrap();
    assert_eq!(
        (total, bobs[0].language_title.to_string().as_str()),
        (1, "rust-b")
    );
    let (total, _) = registry
        .list(&page(
            Some("nodejs"),
            None,
            Some(FunctionKind::Predefined),
            1,
            20,
        ))
        .await
        .unwrap();
    assert_eq!(total, 1);
    // Filters are bound parameters, not SQL.
    let (total, _) = registry
        .list(&page(Some("x' OR '1'='1"), None, None, 1, 20))
        .await
        .unwrap();
    assert_eq!(total, 0);
    assert!(registry.health().await.is_ok());
}

fn log_batch() -> Vec<LogRecord> {
    let now = Utc::now();
    let id = uuid::Uuid::new_v4();
    vec![
        LogRecord::Request(RequestLog {
            id,
            request_id: Some("r1".into()),
            method: "POST".into(),
            endpoint: "/api/v1/execute/{request_id}".into(),
            status: 500,
            duration_ms: 12.6,
            user_id: Some("alice".into()),
            language_title: Some("rust-b".into()),
            cached: Some(false),
            client_ip: Some("127.0.0.1".into()),
            created_at: now,
        }),
        LogRecord::Error(ErrorLog {
            request_log_id: id,
            request_id: Some("r1".into()),
            endpoint: "/api/v1/execute/{request_id}".into(),
            code: "RUNTIME_ERROR".into(),
            message: "boom".into(),
            details: json!({ "message": "boom", "stack_trace": "at line 1" }),
            created_at: now,
        }),
        LogRecord::Session(session("r1", Duration::from_secs(60))),
    ]
}

async fn artifact_conformance(store: Arc<dyn ArtifactStore>) {
    let first = Digest::of(uuid::Uuid::new_v4().as_bytes());
    let digest = first;
    assert!(store.get(digest).await.unwrap().is_none());
    let artifact = SealedArtifact {
        component: vec![0u8, 97, 115, 109, 255].into(),
        seal: vec![7u8; 32],
    };
    store.put(digest, &artifact).await.unwrap();
    store.put(digest, &artifact).await.unwrap();
    let stored = store.get(digest).await.unwrap().unwrap();
    assert_eq!(
        (&*stored.component, stored.seal.as_slice()),
        (&*artifact.component, artifact.seal.as_slice())
    );

    // Behind the seals: what the front put comes back; a component
    // swapped under its seal is missing, and counted.
    let artifacts = Artifacts::new(store.clone(), IntegrityKey::derive(b"a test secret"));
    let digest = Digest::of(uuid::Uuid::new_v4().as_bytes());
    artifacts.put(digest, b"the component").await.unwrap();
    assert_eq!(
        artifacts.get(digest).await.as_deref(),
        Some(b"the component".as_slice())
    );
    let mut swapped = store.get(digest).await.unwrap().unwrap();
    swapped.component = b"a substitute".to_vec().into();
    store.put(digest, &swapped).await.unwrap();
    assert!(artifacts.get(digest).await.is_none());
    assert_eq!(artifacts.rejected(), 1);
    // Storing it again (a rebuild) replaces the bad copy.
    artifacts.put(digest, b"the component").await.unwrap();
    assert_eq!(
        artifacts.get(digest).await.as_deref(),
        Some(b"the component".as_slice())
    );

    // The sweep: nothing is older than a day ago, so nothing goes; with a
    // cutoff past every entry, all but the kept ones go.
    let day_ago = Utc::now() - chrono::Duration::days(1);
    assert_eq!(
        store.remove_unused(&HashSet::new(), day_ago).await.unwrap(),
        0
    );
    let unused = Digest::of(uuid::Uuid::new_v4().as_bytes());
    store.put(unused, &artifact).await.unwrap();
    let soon = Utc::now() + chrono::Duration::minutes(1);
    let keep = HashSet::from([digest]);
    assert_eq!(store.remove_unused(&keep, soon).await.unwrap(), 2);
    assert!(store.get(first).await.unwrap().is_none());
    assert!(store.get(unused).await.unwrap().is_none());
    assert!(store.get(digest).await.unwrap().is_some());
}

#[tokio::test]
async fn memory_sessions_conform() {
    session_conformance(&MemorySessions::new(64 << 20)).await;
}

#[tokio::test]
async fn redis_sessions_conform() {
    session_conformance(&redis()).await;
}

#[tokio::test]
async fn resilient_sessions_over_redis_conform() {
    let shared = std::sync::Arc::new(redis());
    session_conformance(&ResilientSessions::new(shared, 64 << 20)).await;
}

#[tokio::test]
async fn recorded_sessions_conform_on_both_databases() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(sqlite(&dir).await);
    let postgres = Arc::new(postgres().await);
    session_records_conformance(sqlite.as_ref()).await;
    session_records_conformance(postgres.as_ref()).await;
    let records: [Arc<dyn SessionRecords>; 2] = [sqlite, postgres];
    for records in records {
        let live = Arc::new(MemorySessions::new(64 << 20));
        session_conformance(&RecordedSessions::new(live, records)).await;
    }
}

/// What the durable session records promise: a created session reads back
/// whole while it is active and unexpired; an ended one never again, even
/// when the log writer brings a later copy of it; counts only grow; a live
/// id cannot be taken, an ended or expired one can.
async fn session_records_conformance(records: &(impl SessionRecords + LogStore)) {
    let copy = |s: &Session| vec![LogRecord::Session(s.clone())];
    let id = uuid::Uuid::new_v4().to_string();
    let mut written = session(&id, Duration::from_secs(60));
    // Whole seconds: both databases keep at least microseconds, not nanos.
    written.created_at = written.created_at.with_nanosecond(0).unwrap();
    written.expires_at = written.expires_at.with_nanosecond(0).unwrap();
    assert_eq!(records.read(&id).await.unwrap(), None);
    assert!(records.create(&written).await.unwrap());
    assert_eq!(records.read(&id).await.unwrap(), Some(written.clone()));
    let mut mallory = written.clone();
    mallory.owner = "mallory".into();
    assert!(
        !records.create(&mallory).await.unwrap(),
        "a live id is taken"
    );
    assert_eq!(records.read(&id).await.unwrap().unwrap().owner, "alice");

    let mut later = written.clone();
    later.execution_count = 3;
    later.last_executed_at = Some(written.created_at);
    records.write_batch(&copy(&later)).await.unwrap();
    records.write_batch(&copy(&written)).await.unwrap(); // an older copy, late
    assert_eq!(records.read(&id).await.unwrap().unwrap().execution_count, 3);

    records.end(&id).await.unwrap();
    assert_eq!(records.read(&id).await.unwrap(), None);
    records.write_batch(&copy(&later)).await.unwrap();
    assert_eq!(records.read(&id).await.unwrap(), None, "ended stays ended");
    // An ended id may start a new session, which replaces the record.
    assert!(records.create(&mallory).await.unwrap());
    assert_eq!(records.read(&id).await.unwrap().unwrap().owner, "mallory");

    let expired_id = uuid::Uuid::new_v4().to_string();
    let mut expired = session(&expired_id, Duration::from_secs(60));
    expired.expires_at = Utc::now() - chrono::Duration::seconds(1);
    assert!(records.create(&expired).await.unwrap());
    assert_eq!(records.read(&expired_id).await.unwrap(), None);
    assert!(
        records
            .create(&written_as(&expired_id, &written))
            .await
            .unwrap()
    );
    // Ending what was never written is not an error.
    records.end("no-such-session").await.unwrap();
}

fn written_as(id: &str, session: &Session) -> Session {
    Session {
        request_id: id.to_owned(),
        ..session.clone()
    }
}

/// A record someone altered in the database (a digest that is not one, a
/// function name that is not one) is no session: never a panic, never run.
#[tokio::test]
async fn a_damaged_session_record_is_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let records: Arc<dyn SessionRecords> = Arc::new(store.clone());
    let sessions = RecordedSessions::new(Arc::new(MemorySessions::new(64 << 20)), records.clone());
    for (column, value) in [
        ("component_digest", "../../etc/passwd"),
        ("build_digest", "zz"),
        ("language_title", "cobol-x"),
        ("context", "{not json"),
    ] {
        let session = session(&uuid::Uuid::new_v4().to_string(), Duration::from_secs(60));
        assert!(records.create(&session).await.unwrap());
        sqlx::query(&format!(
            "UPDATE sessions SET {column} = ?1 WHERE request_id = ?2"
        ))
        .bind(value)
        .bind(&session.request_id)
        .execute(store.pool())
        .await
        .unwrap();
        assert!(records.read(&session.request_id).await.is_err(), "{column}");
        assert_eq!(
            sessions.get(&session.request_id).await.unwrap(),
            None,
            "{column}"
        );
    }
}

/// A session the live store lost (Redis restarted empty, a restarted
/// host) is served from its record and put back; one that ended is not.
#[tokio::test]
async fn a_session_the_live_store_lost_is_restored_from_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let records: Arc<dyn SessionRecords> = Arc::new(sqlite(&dir).await);
    let kept = session(&uuid::Uuid::new_v4().to_string(), Duration::from_secs(60));
    let ended = session(&uuid::Uuid::new_v4().to_string(), Duration::from_secs(60));
    let before = RecordedSessions::new(Arc::new(MemorySessions::new(64 << 20)), records.clone());
    for s in [&kept, &ended] {
        assert_eq!(
            before.insert_new(s, NO_QUOTA).await.unwrap(),
            Insert::Inserted
        );
    }
    before.remove(&ended).await.unwrap();

    let live = Arc::new(MemorySessions::new(64 << 20));
    let after = RecordedSessions::new(live.clone(), records);
    assert_eq!(
        after
            .get(&kept.request_id)
            .await
            .unwrap()
            .map(|s| s.request_id),
        Some(kept.request_id.clone())
    );
    assert!(
        live.get(&kept.request_id).await.unwrap().is_some(),
        "restored"
    );
    assert_eq!(after.get(&ended.request_id).await.unwrap(), None);
}

#[tokio::test]
async fn memory_result_cache_conforms() {
    cache_conformance(&MemoryResultCache::new(1 << 20)).await;
}

#[tokio::test]
async fn redis_result_cache_conforms() {
    cache_conformance(&redis()).await;
}

#[tokio::test]
async fn memory_rate_limiter_conforms() {
    limiter_conformance(&MemoryRateLimiter::new(1000)).await;
}

#[tokio::test]
async fn redis_rate_limiter_conforms() {
    limiter_conformance(&redis()).await;
}

#[tokio::test]
async fn sqlite_registry_conforms() {
    let dir = tempfile::tempdir().unwrap();
    registry_conformance(&sqlite(&dir).await).await;
    tier_conformance(&sqlite(&dir).await).await;
}

#[tokio::test]
async fn postgres_registry_conforms() {
    registry_conformance(&postgres().await).await;
    tier_conformance(&postgres().await).await;
}

#[tokio::test]
async fn disk_artifacts_conform() {
    let dir = tempfile::tempdir().unwrap();
    artifact_conformance(Arc::new(DiskArtifacts::open(dir.path()).unwrap())).await;
}

#[tokio::test]
async fn postgres_artifacts_conform() {
    artifact_conformance(Arc::new(postgres().await)).await;
}

#[tokio::test]
async fn sqlite_logs_are_written_linked() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    store.write_batch(&log_batch()).await.unwrap();
    let (code, linked): (String, i64) = sqlx::query_as(
        "SELECT e.code, COUNT(r.log_id) FROM error_logs e JOIN request_logs r ON r.log_id = e.request_log_id",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((code.as_str(), linked), ("RUNTIME_ERROR", 1));
}

#[tokio::test]
async fn postgres_logs_fill_the_seed_tables() {
    let store = postgres().await;
    store.write_batch(&log_batch()).await.unwrap();
    // The seed's columns, queried as the seed's users query them.
    let (status_code, duration_ms, language_title, cached): (i32, i32, String, bool) = sqlx::query_as(
        "SELECT status_code, duration_ms, language_title, cached FROM public.request_logs WHERE request_id = 'r1'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(
        (status_code, duration_ms, language_title.as_str(), cached),
        (500, 13, "rust-b", false)
    );
    let (error_code, stack_trace): (String, Option<String>) = sqlx::query_as(
        "SELECT e.error_code, e.stack_trace FROM public.error_logs e
         JOIN public.request_logs r ON r.id = e.request_log_id",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(
        (error_code.as_str(), stack_trace.as_deref()),
        ("RUNTIME_ERROR", Some("at line 1"))
    );
    let (user_id, status): (Option<String>, String) =
        sqlx::query_as("SELECT user_id, status FROM meta.sessions WHERE request_id = 'r1'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(
        (user_id.as_deref(), status.as_str()),
        (Some("alice"), "active")
    );
    // Writing the same request again (a retry after a lost commit) adds no
    // second row.
    let again = log_batch();
    store.write_batch(&again[..1]).await.unwrap();
    store.write_batch(&again[..1]).await.unwrap();
    let LogRecord::Request(request) = &again[0] else {
        unreachable!()
    };
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM public.request_logs WHERE id = $1")
        .bind(request.id)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

/// Records as an attacker would shape them: values wider than their
/// columns, NUL characters in text and JSON, and two records that no
/// bounding can save (an error row naming a request row that does not
/// exist, a time PostgreSQL cannot store), between two ordinary requests.
fn hostile_log_records() -> (Vec<LogRecord>, [uuid::Uuid; 2]) {
    let now = Utc::now();
    let request = |id: uuid::Uuid, request_id: &str| RequestLog {
        id,
        request_id: Some(request_id.into()),
        method: "GET".into(),
        endpoint: "/health".into(),
        status: 200,
        duration_ms: 1.0,
        user_id: None,
        language_title: None,
        cached: None,
        client_ip: Some("127.0.0.1".into()),
        created_at: now,
    };
    let (first, last) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let wide = uuid::Uuid::new_v4();
    let mut sneaky_session = session("s-\u{0}", Duration::from_secs(60));
    sneaky_session.context = json!({ "k\u{0}": "v\u{0}" });
    sneaky_session.owner = "o".repeat(300);
    let records = vec![
        LogRecord::Request(request(first, "first")),
        LogRecord::Request(RequestLog {
            method: "PROPPATCH".into(),
            request_id: Some("r".repeat(100)),
            user_id: Some("u".repeat(300)),
            endpoint: "/api/\u{0}".into(),
            language_title: Some("l".repeat(300)),
            client_ip: Some("x".repeat(100)),
            duration_ms: f64::INFINITY,
            ..request(wide, "wide")
        }),
        LogRecord::Error(ErrorLog {
            request_log_id: wide,
            request_id: Some("r".repeat(100)),
            endpoint: "e".repeat(300),
            code: "C".repeat(100),
            message: "nul \u{0} and more".repeat(10_000),
            details: json!({ "stack_trace": "\u{0}", "big": "x".repeat(1 << 20) }),
            created_at: now,
        }),
        LogRecord::Session(sneaky_session),
        // Refused: the request row it names does not exist.
        LogRecord::Error(ErrorLog {
            request_log_id: uuid::Uuid::new_v4(),
            request_id: None,
            endpoint: "/".into(),
            code: "X".into(),
            message: "orphan".into(),
            details: json!({}),
            created_at: now,
        }),
        // Refused: before the first time PostgreSQL can store (4713 BC).
        LogRecord::Request(RequestLog {
            created_at: chrono::DateTime::<Utc>::MIN_UTC,
            ..request(uuid::Uuid::new_v4(), "far-past")
        }),
        LogRecord::Request(request(last, "last")),
    ];
    (records, [first, last])
}

/// Queues the hostile records through the writer as the host does;
/// returns how many were quarantined.
async fn write_hostile_records(store: Arc<dyn LogStore>) -> u64 {
    let quarantined = prometheus::IntCounter::new("q", "q").unwrap();
    let dropped = prometheus::IntCounter::new("d", "d").unwrap();
    let (writer, task) =
        lambda_host::store::LogWriter::start(store, 64, dropped.clone(), quarantined.clone());
    let (records, _) = hostile_log_records();
    for record in records {
        writer.record(record);
    }
    tokio::time::timeout(Duration::from_secs(30), writer.flush())
        .await
        .expect("the log pipeline is stuck");
    drop(writer);
    task.await.unwrap();
    assert_eq!(dropped.get(), 0);
    quarantined.get()
}

#[tokio::test]
async fn postgres_log_pipeline_writes_everything_but_what_it_cannot_and_never_stops() {
    let store = postgres().await;
    let quarantined = write_hostile_records(Arc::new(store.clone())).await;
    assert_eq!(quarantined, 2, "the orphan error and the far past");
    let rows: Vec<(Option<String>, String)> =
        sqlx::query_as("SELECT request_id, method FROM public.request_logs ORDER BY timestamp")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let ids: Vec<&str> = rows.iter().filter_map(|(r, _)| r.as_deref()).collect();
    assert!(ids.contains(&"first") && ids.contains(&"last"), "{ids:?}");
    // The wide request is kept, cut to its columns.
    let (request_id, method) = rows.iter().find(|(_, m)| m.starts_with("PROPP")).unwrap();
    assert_eq!(method, "PROPPATC");
    assert_eq!(request_id.as_deref().unwrap().len(), 64);
    let (code, message_chars): (String, i32) =
        sqlx::query_as("SELECT error_code, length(error_message) FROM public.error_logs")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!((code.len(), message_chars), (64, 16 << 10));
    let (owner, context): (String, serde_json::Value) =
        sqlx::query_as("SELECT user_id, context FROM meta.sessions")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(owner.len(), 128);
    assert_eq!(context, json!({ "k\u{FFFD}": "v\u{FFFD}" }));
}

#[tokio::test]
async fn sqlite_log_pipeline_writes_every_hostile_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    // SQLite stores any width and has no link to enforce: nothing refused.
    assert_eq!(write_hostile_records(Arc::new(store.clone())).await, 0);
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM request_logs")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(count, 4);
}

/// Old request logs (with their errors) and the records of long-ended
/// sessions are swept; recent ones stay.
async fn sweep_conformance(store: &dyn LogStore) -> u64 {
    let now = Utc::now();
    let month = chrono::Duration::days(31);
    let mut old = log_batch();
    let mut recent = log_batch();
    for record in &mut old {
        match record {
            LogRecord::Request(r) => {
                r.created_at = now - month;
                r.request_id = Some("old".into());
            }
            LogRecord::Error(e) => e.created_at = now - month,
            LogRecord::Session(s) => {
                s.request_id = "old-session".into();
                s.expires_at = now - month;
            }
        }
    }
    for record in &mut recent {
        if let LogRecord::Request(r) = record {
            r.request_id = Some("recent".into());
        }
    }
    store.write_batch(&old).await.unwrap();
    store.write_batch(&recent).await.unwrap();
    let swept = store.sweep(now - chrono::Duration::days(30)).await.unwrap();
    assert_eq!(swept, 3, "the old request, its error and the ended session");
    assert_eq!(
        store.sweep(now - chrono::Duration::days(30)).await.unwrap(),
        0
    );
    swept
}

#[tokio::test]
async fn postgres_sweeps_logs_past_their_retention() {
    let store = postgres().await;
    sweep_conformance(&store).await;
    let left: Vec<(Option<String>,)> = sqlx::query_as("SELECT request_id FROM public.request_logs")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(left, [(Some("recent".to_owned()),)]);
    let (errors, sessions): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM public.error_logs), (SELECT COUNT(*) FROM meta.sessions)",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((errors, sessions), (1, 1));
}

#[tokio::test]
async fn sqlite_sweeps_logs_past_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    sweep_conformance(&store).await;
    let left: Vec<(Option<String>,)> = sqlx::query_as("SELECT request_id FROM request_logs")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(left, [(Some("recent".to_owned()),)]);
    let (errors, sessions): (i64, i64) =
        sqlx::query_as("SELECT (SELECT COUNT(*) FROM error_logs), (SELECT COUNT(*) FROM sessions)")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!((errors, sessions), (1, 1));
}

/// Key-value data: entries by namespace, binary values, sizes in bytes
/// (not characters), and a quota that concurrent writers cannot overshoot.
async fn key_value_conformance(store: Arc<dyn KeyValueStore>) {
    let (a, b) = ("namespace-a", "namespace-b");
    assert_eq!(store.get(a, "k").await.unwrap(), None);
    assert!(!store.exists(a, "k").await.unwrap());
    let binary = [0u8, 255, 10, 0, 1];
    assert_eq!(
        store.set(a, "k", &binary, 100).await.unwrap(),
        KvSet::Stored
    );
    assert_eq!(
        store.get(a, "k").await.unwrap().as_deref(),
        Some(&binary[..])
    );
    assert!(store.exists(a, "k").await.unwrap());
    // Another namespace sees none of it.
    assert_eq!(store.get(b, "k").await.unwrap(), None);
    assert!(store.keys(b).await.unwrap().is_empty());
    assert_eq!(
        store.set(b, "k", b"other", 100).await.unwrap(),
        KvSet::Stored
    );
    assert_eq!(
        store.get(a, "k").await.unwrap().as_deref(),
        Some(&binary[..])
    );

    // Quota 100: "k" + 5 bytes = 6 used. "ü" is 2 bytes: 2 + 92 = 94 fits
    // exactly, one more byte does not.
    assert_eq!(
        store.set(a, "ü", &[7; 93], 100).await.unwrap(),
        KvSet::OverQuota
    );
    assert_eq!(store.get(a, "ü").await.unwrap(), None);
    assert_eq!(
        store.set(a, "ü", &[7; 92], 100).await.unwrap(),
        KvSet::Stored
    );
    // Replacing a value counts the difference, not both.
    assert_eq!(
        store.set(a, "ü", &[8; 92], 100).await.unwrap(),
        KvSet::Stored
    );
    assert_eq!(
        store.set(a, "ü", &[8; 93], 100).await.unwrap(),
        KvSet::OverQuota
    );
    assert_eq!(
        store.get(a, "ü").await.unwrap(),
        Some(vec![8; 92]),
        "the old value stays"
    );
    let mut keys = store.keys(a).await.unwrap();
    keys.sort();
    assert_eq!(keys, ["k", "ü"]);
    // Deleting frees its bytes; deleting a missing key is no error.
    store.delete(a, "ü").await.unwrap();
    store.delete(a, "ü").await.unwrap();
    assert!(!store.exists(a, "ü").await.unwrap());
    assert_eq!(
        store.set(a, "big", &[1; 91], 100).await.unwrap(),
        KvSet::Stored
    );

    // 20 writers of 10-byte entries into a 50-byte quota: exactly 5 fit.
    let c = "namespace-c";
    let writes = (0..20).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.set(c, &format!("k{i:02}"), &[i as u8; 7], 50).await })
    });
    let mut stored = 0;
    for write in writes {
        if write.await.unwrap().unwrap() == KvSet::Stored {
            stored += 1;
        }
    }
    assert_eq!(stored, 5);
    assert_eq!(store.keys(c).await.unwrap().len(), 5);
}

#[tokio::test]
async fn sqlite_key_value_conforms() {
    let dir = tempfile::tempdir().unwrap();
    key_value_conformance(Arc::new(sqlite(&dir).await)).await;
}

#[tokio::test]
async fn redis_key_value_conforms() {
    key_value_conformance(Arc::new(redis())).await;
}
