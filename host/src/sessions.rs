//! The use cases of sessions, free of HTTP: start one (initialize), run
//! its function once or answer from the result cache (execute), look one
//! up. The API turns a request into a [`StartRequest`] or an
//! [`ExecuteRequest`] and the outcome back into a response; the mapping of
//! [`StartError`] and [`ExecuteError`] to API codes is the API's, in one
//! place (`api/error.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::digest::Digest;
use crate::functions::{Executable, FunctionError, Functions};
use crate::language::{Language, LanguageTitle};
use crate::runtime::Invocation;
use crate::runtime::policy::Declared;
use crate::runtime::worlds::World;
use crate::store::{
    Insert, LogRecord, LogWriter, RateDecision, RateLimiter, ResultCache, Session, SessionStore,
    StoreError,
};
use crate::telemetry::{ExecutionOutcome, Metrics};
use crate::toolchain::BuildOptions;

/// One initialize call.
pub struct StartRequest<'a> {
    pub caller: &'a Principal,
    pub language_title: LanguageTitle,
    /// What every execution sees; the host reads `timeout_ms`,
    /// `retain_session` and `compile_options` from it.
    pub context: Option<Value>,
    /// A source: creates the caller's dynamic function of that name, or
    /// replaces it.
    pub source: Option<String>,
    /// A session id of the caller's choosing; one in use is not reused.
    pub requested_id: Option<String>,
}

/// Why no session was started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the token does not grant execute:{0} or execute:all")]
    Forbidden(Language),
    #[error("{0}")]
    InvalidContext(String),
    #[error("context is {bytes} bytes of JSON, at most {limit}")]
    ContextTooLarge { bytes: usize, limit: usize },
    #[error("script_content must not contain NUL characters")]
    NulInSource,
    #[error("too many builds; retry later")]
    TooManyBuilds { retry_after_secs: u64 },
    #[error("no function {0}: send script_content to create it")]
    NoSuchFunction(LanguageTitle),
    #[error(
        "your live sessions hold {used_bytes} bytes; one more would pass your quota of \
         {quota_bytes}: let sessions expire, or initialize with retain_session: false"
    )]
    OverQuota { used_bytes: u64, quota_bytes: u64 },
    #[error(transparent)]
    Function(#[from] FunctionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What initialize reads from `context`; the rest is the function's.
#[derive(Default, Deserialize)]
struct SessionOptions {
    timeout_ms: Option<u64>,
    retain_session: Option<bool>,
    compile_options: Option<BuildOptions>,
    /// With a source: the function's opt-in to warm instances.
    warm_instances: Option<bool>,
    /// With a source: what an HTTP function declares it needs.
    capabilities: Option<Declared>,
}

/// What the caller asks of the result cache (`X-Cache-Control`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachePolicy {
    /// Serve a cached result; cache a new one for the server's default.
    Default,
    /// Always execute; cache the new result for the server's default.
    NoCache,
    /// Serve a cached result; cache a new one this long (capped by the
    /// server's maximum).
    MaxAge(Duration),
}

/// One execute call.
pub struct ExecuteRequest<'a> {
    pub session_id: &'a str,
    pub caller: &'a Principal,
    /// The function's input; it must be a JSON object.
    pub params: Option<Value>,
    pub cache: CachePolicy,
}

/// What an execution answered.
pub struct Executed {
    pub session: Session,
    pub result: Value,
    /// Whether the result came from the result cache.
    pub cached: bool,
}

/// Why an execute call has no result.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// No such session of the caller's: unknown, expired, ended, or
    /// another user's (whose existence is not revealed).
    #[error("no such session, or it has expired")]
    NotFound,
    #[error("the token does not grant execute:{0} or execute:all")]
    Forbidden(Language),
    #[error("{0}")]
    InvalidParams(&'static str),
    /// The function could not be loaded or did not run to a result.
    #[error(transparent)]
    Function(#[from] FunctionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The limits sessions live by (from the server's settings).
#[derive(Clone, Copy, Debug)]
pub struct SessionSettings {
    /// How long a session lives.
    pub ttl: Duration,
    /// The largest context, in bytes of JSON.
    pub max_context_bytes: usize,
    /// What one caller's live sessions may weigh.
    pub quota_bytes: u64,
    /// The deadline of a session that sets none.
    pub default_timeout: Duration,
    /// The longest deadline a session may set.
    pub max_timeout: Duration,
    /// Initialize requests with a source, per caller and minute.
    pub builds_per_minute: u32,
    /// How long a result stays cached unless the caller says.
    pub cache_ttl: Duration,
    /// The longest a result stays cached, whatever the caller says.
    pub cache_max_ttl: Duration,
}

/// The stores and parts the session use cases work with.
pub struct SessionParts {
    pub functions: Arc<Functions>,
    pub store: Arc<dyn SessionStore>,
    pub cache: Arc<dyn ResultCache>,
    pub limiter: Arc<dyn RateLimiter>,
    pub logs: LogWriter,
    pub metrics: Arc<Metrics>,
}

pub struct Sessions {
    functions: Arc<Functions>,
    sessions: Arc<dyn SessionStore>,
    cache: Arc<dyn ResultCache>,
    limiter: Arc<dyn RateLimiter>,
    logs: LogWriter,
    metrics: Arc<Metrics>,
    settings: SessionSettings,
}

impl Sessions {
    pub fn new(parts: SessionParts, settings: SessionSettings) -> Self {
        Self {
            functions: parts.functions,
            sessions: parts.store,
            cache: parts.cache,
            limiter: parts.limiter,
            logs: parts.logs,
            metrics: parts.metrics,
            settings,
        }
    }

    /// Resolves the function (building the caller's source first, if
    /// given), loads it so the first execution does not pay for the
    /// compile, and starts a session of it.
    pub async fn start(&self, request: StartRequest<'_>) -> Result<Session, StartError> {
        let StartRequest {
            caller,
            language_title,
            context,
            source,
            requested_id,
        } = request;
        if !caller.may_execute(language_title.language()) {
            return Err(StartError::Forbidden(language_title.language()));
        }
        let context = context.unwrap_or_else(|| json!({}));
        if !context.is_object() {
            return Err(StartError::InvalidContext(
                "context must be a JSON object".to_owned(),
            ));
        }
        // A session keeps its context for its lifetime, in every store: its
        // size is bounded apart from the body's.
        let bytes = context.to_string().len();
        let limit = self.settings.max_context_bytes;
        if bytes > limit {
            return Err(StartError::ContextTooLarge { bytes, limit });
        }
        let options: SessionOptions = serde_json::from_value(context.clone())
            .map_err(|e| StartError::InvalidContext(format!("invalid context: {e}")))?;
        let timeout_ms = match options.timeout_ms {
            Some(0) => {
                return Err(StartError::InvalidContext(
                    "context.timeout_ms must be positive".to_owned(),
                ));
            }
            Some(ms) => ms.min(self.settings.max_timeout.as_millis() as u64),
            None => self.settings.default_timeout.as_millis() as u64,
        };

        let function = match source {
            Some(source) => {
                // No language's source holds a NUL character, and
                // PostgreSQL would refuse to store one: refused before any
                // build.
                if source.contains('\0') {
                    return Err(StartError::NulInSource);
                }
                if let Some(declared) = &options.capabilities {
                    declared.check().map_err(StartError::InvalidContext)?;
                    let missing = self
                        .functions
                        .runtime()
                        .policy()
                        .not_granted(&language_title.to_string(), declared);
                    if !missing.is_empty() {
                        return Err(FunctionError::Forbidden(format!(
                            "the operator's capability policy does not grant {language_title}: {}",
                            missing.join(", ")
                        ))
                        .into());
                    }
                }
                self.check_build_rate(&caller.subject).await?;
                self.functions
                    .register_dynamic(
                        &language_title,
                        &caller.subject,
                        &source,
                        &options.compile_options.unwrap_or_default(),
                        options.warm_instances.unwrap_or(false),
                        options.capabilities,
                    )
                    .await?
            }
            None => self
                .functions
                .get(&language_title)
                .await?
                .ok_or(StartError::NoSuchFunction(language_title))?,
        };
        self.functions
            .executable(
                &function.language_title,
                function.build_digest,
                function.component_digest,
            )
            .await?;

        let now = Utc::now();
        let mut session = Session {
            request_id: requested_id.unwrap_or_else(new_id),
            language_title: function.language_title,
            owner: caller.subject.clone(),
            build_digest: function.build_digest,
            component_digest: function.component_digest,
            context,
            timeout_ms,
            retain_session: options.retain_session.unwrap_or(true),
            warm_instances: function.warm_instances,
            created_at: now,
            expires_at: now + self.settings.ttl,
            execution_count: 0,
            last_executed_at: None,
        };
        // The store also writes the durable record (store::recorded).
        let quota_bytes = self.settings.quota_bytes;
        loop {
            match self.sessions.insert_new(&session, quota_bytes).await? {
                Insert::Inserted => break,
                // An id in use is not reused: the session gets a fresh one.
                Insert::IdTaken => session.request_id = new_id(),
                Insert::OverQuota { used_bytes } => {
                    return Err(StartError::OverQuota {
                        used_bytes,
                        quota_bytes,
                    });
                }
            }
        }
        self.metrics.sessions_created.inc();
        Ok(session)
    }

    /// Builds are limited per caller apart from initialize as a whole: a
    /// build costs seconds of CPU. A limiter that cannot be reached lets
    /// the build through.
    async fn check_build_rate(&self, subject: &str) -> Result<(), StartError> {
        let key = format!("build:sub:{subject}");
        let minute = Duration::from_secs(60);
        match self
            .limiter
            .check(&key, self.settings.builds_per_minute, minute)
            .await
        {
            Ok(RateDecision::Allowed) => Ok(()),
            Ok(RateDecision::Limited { retry_after_secs }) => {
                Err(StartError::TooManyBuilds { retry_after_secs })
            }
            Err(e) => {
                tracing::warn!("rate limiter unavailable, build let through: {e}");
                Ok(())
            }
        }
    }

    /// The caller's session, live.
    pub async fn owned_session(&self, id: &str, subject: &str) -> Result<Session, ExecuteError> {
        self.sessions
            .get(id)
            .await?
            .filter(|s| s.owner == subject)
            .ok_or(ExecuteError::NotFound)
    }

    /// Runs the session's function on `params`, or answers from the cache.
    /// Either way the execution is counted on the session (a session that
    /// is not retained ends).
    pub async fn execute(&self, request: ExecuteRequest<'_>) -> Result<Executed, ExecuteError> {
        let session = self
            .owned_session(request.session_id, &request.caller.subject)
            .await?;
        let language = session.language_title.language();
        if !request.caller.may_execute(language) {
            return Err(ExecuteError::Forbidden(language));
        }
        let params = match request.params {
            Some(params @ Value::Object(_)) => params,
            Some(_) => return Err(ExecuteError::InvalidParams("params must be a JSON object")),
            None => {
                return Err(ExecuteError::InvalidParams(
                    "params is required: a JSON object",
                ));
            }
        };
        let executable = self
            .functions
            .executable(
                &session.language_title,
                session.build_digest,
                session.component_digest,
            )
            .await?;
        // An HTTP function may have effects (outbound calls, key-value
        // writes): its results are never cached.
        let cacheable = executable.function.world() == World::Function;
        let key = cache_key(&session, &params);
        let cached = match request.cache {
            _ if !cacheable => None,
            CachePolicy::NoCache => None,
            _ => self.lookup(&key).await,
        };
        if let Some(result) = cached {
            self.count_on_session(&session).await;
            return Ok(Executed {
                session,
                result,
                cached: true,
            });
        }
        let outcome = self.run(&session, executable, &params).await;
        self.count_on_session(&session).await;
        let result = outcome?;
        let ttl = match request.cache {
            CachePolicy::MaxAge(ttl) => ttl.min(self.settings.cache_max_ttl),
            _ => self.settings.cache_ttl,
        };
        if cacheable && let Err(e) = self.cache.put(&key, &result, ttl).await {
            tracing::warn!("result cache unavailable, result not stored: {e}");
        }
        Ok(Executed {
            session,
            result,
            cached: false,
        })
    }

    /// A cached result; a cache that cannot be reached is a miss, not an
    /// error.
    async fn lookup(&self, key: &str) -> Option<Value> {
        match self.cache.get(key).await {
            Ok(Some(result)) => {
                self.metrics.cache_hits.inc();
                Some(result)
            }
            Ok(None) => {
                self.metrics.cache_misses.inc();
                None
            }
            Err(e) => {
                tracing::warn!("result cache unavailable, executing: {e}");
                self.metrics.cache_misses.inc();
                None
            }
        }
    }

    /// One execution in a fresh instance, counted in the metrics.
    async fn run(
        &self,
        session: &Session,
        executable: Executable,
        params: &Value,
    ) -> Result<Value, FunctionError> {
        let language = session.language_title.language();
        let invocation = Invocation {
            request_id: session.request_id.clone(),
            language_title: session.language_title.to_string(),
            params: params.clone(),
            context: session.context.clone(),
            caller: session.owner.clone(),
            script: executable.script,
            warm_version: session.warm_instances.then_some(session.build_digest),
        };
        let started = Instant::now();
        let timeout = Some(Duration::from_millis(session.timeout_ms));
        let runtime = self.functions.runtime();
        // An HTTP function executes as a JSON POST of the params.
        let outcome = match executable.function.world() {
            World::Function => {
                runtime
                    .invoke(&executable.function, &invocation, timeout)
                    .await
            }
            World::Http => {
                let scope = self
                    .functions
                    .scope_of_version(&session.language_title, session.build_digest)
                    .await;
                runtime
                    .execute_http(executable.function.clone(), &invocation, &scope, timeout)
                    .await
            }
        };
        let label = match &outcome {
            Ok(_) => ExecutionOutcome::Ok,
            Err(e) => e.outcome(),
        };
        self.metrics
            .count_execution(language, executable.tier, label);
        self.metrics
            .execution_duration
            .with_label_values(&[language.as_str(), executable.tier.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let execution = outcome?;
        for line in &execution.logs {
            tracing::debug!(request_id = %session.request_id, level = line.level.as_str(), "guest: {}", line.message);
        }
        Ok(execution.result)
    }

    /// Counts the execution on the session, and ends a session that asked
    /// not to be retained; the durable record gets the new count through
    /// the log writer.
    async fn count_on_session(&self, session: &Session) {
        let at = Utc::now();
        let stored = if session.retain_session {
            self.sessions.record_execution(session, at).await
        } else {
            self.sessions.remove(session).await.map(|()| None)
        };
        let counted = match stored {
            Ok(Some(counted)) => counted,
            // Removed (not retained, or gone meanwhile), or the store
            // failed: the durable record still gets this execution.
            outcome => {
                if let Err(e) = outcome {
                    tracing::warn!(request_id = %session.request_id, "cannot count the execution on the session: {e}");
                }
                let mut counted = session.clone();
                counted.execution_count += 1;
                counted.last_executed_at = Some(at);
                counted
            }
        };
        self.logs.record(LogRecord::Session(counted));
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The cache key of a result: everything the result depends on or belongs
/// to — the function version, the caller (an entry is never served to
/// another user), the session's context and the params, the JSON in a
/// canonical form (object keys sorted) so `{"a":1,"b":2}` and
/// `{"b":2,"a":1}` share an entry.
pub fn cache_key(session: &Session, params: &Value) -> String {
    let context = canonical_json(&session.context);
    let params = canonical_json(params);
    // The build digest names the version whichever tier runs it; every
    // function on one interpreter shares its component digest.
    let version = session.build_digest.to_string();
    format!(
        "result:{}",
        Digest::of_fields([
            version.as_bytes(),
            session.owner.as_bytes(),
            &context,
            &params,
        ])
    )
}

fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_canonical(value, &mut out);
    out
}

/// JSON with every object's keys in order, written into one buffer: the
/// same text for the same value, however its keys were ordered.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(out, key);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_json(out, scalar),
    }
}

/// A string or a scalar as JSON text.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("JSON into memory cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session(version: &str, owner: &str, context: Value) -> Session {
        let now = Utc::now();
        Session {
            request_id: "r".into(),
            language_title: "rust-f".parse().unwrap(),
            owner: owner.into(),
            build_digest: Digest::of(version.as_bytes()),
            component_digest: Digest::of(b"an interpreter"),
            context,
            timeout_ms: 1000,
            retain_session: true,
            warm_instances: false,
            created_at: now,
            expires_at: now,
            execution_count: 0,
            last_executed_at: None,
        }
    }

    #[test]
    fn the_cache_key_ignores_key_order_but_not_values_versions_callers_or_contexts() {
        let v1 = session("v1", "alice", json!({ "k": 1 }));
        let a = cache_key(&v1, &json!({ "a": 1, "b": { "x": [1, 2], "y": null } }));
        let b = cache_key(&v1, &json!({ "b": { "y": null, "x": [1, 2] }, "a": 1 }));
        assert_eq!(a, b);
        let params = json!({ "a": 1, "b": { "x": [1, 2], "y": null } });
        assert_ne!(
            a,
            cache_key(&v1, &json!({ "a": 2, "b": { "x": [1, 2], "y": null } }))
        );
        for other in [
            session("v2", "alice", json!({ "k": 1 })),
            session("v1", "mallory", json!({ "k": 1 })),
            session("v1", "alice", json!({ "k": 2 })),
        ] {
            assert_ne!(a, cache_key(&other, &params));
        }
        assert_ne!(
            cache_key(&v1, &json!({ "a": [1, 2] })),
            cache_key(&v1, &json!({ "a": [2, 1] }))
        );
    }

    #[test]
    fn canonical_json_is_compact_json_with_sorted_keys() {
        // The text is part of every cached result's key (in Redis, across
        // host versions): it must not change.
        let value = json!({ "b": [1, { "d": "x\"y", "c": null }], "é": true, "a": 1.5 });
        assert_eq!(
            String::from_utf8(canonical_json(&value)).unwrap(),
            r#"{"a":1.5,"b":[1,{"c":null,"d":"x\"y"}],"é":true}"#
        );
    }
}
