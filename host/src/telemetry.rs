//! Prometheus metrics. The names and labels are part of the API contract
//! (API.md); every label has a bounded set of values — never a request id
//! or a dynamic function's title.

use prometheus::{
    Counter, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::language::Language;

/// Every metric of the host, registered in one registry.
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub executions: IntCounterVec,
    pub execution_duration: HistogramVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub sessions_active: IntGauge,
    pub sessions_created: IntCounter,
    pub builds: IntCounterVec,
    pub build_duration: HistogramVec,
    /// Tier-1 builds of functions that started on an interpreter.
    pub tier_ups: IntCounterVec,
    /// From registration on the interpreter to tier 1 running.
    pub tier_up_duration: HistogramVec,
    /// Log records that could not be queued for the database: counted and
    /// reported, never dropped silently.
    pub log_records_dropped: IntCounter,
    pub log_records_quarantined: IntCounter,
    pub instances_in_use: IntGauge,
    /// Warm instances waiting for their caller's next execution.
    pub warm_instances_idle: IntGauge,
    /// Execution processes running now, and started since the host started
    /// (more started than running: some died and were replaced).
    pub execution_processes_running: IntGauge,
    pub execution_processes_started: IntGauge,
    pub pool_size: IntGauge,
    pub loaded_components: IntGauge,
    pub loaded_component_bytes: IntGauge,
}

/// Buckets from 100 µs to 5 min (the longest deadline): executions span
/// four orders of magnitude, and an initialize that builds takes tens of
/// seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Declares a label's values once: the enum the code counts with, and the
/// strings every series is created with at zero.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &[Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }
    };
}

label_values! {
    /// The `outcome` label of `lambda_executions_total`.
    ExecutionOutcome {
        Ok => "ok",
        RuntimeError => "runtime_error",
        Timeout => "timeout",
        OutOfMemory => "out_of_memory",
        Error => "error",
        Overloaded => "overloaded",
        RateLimited => "rate_limited",
    }
}

label_values! {
    /// The `outcome` label of `lambda_component_builds_total`.
    BuildOutcome {
        Ok => "ok",
        CompileError => "compile_error",
        Timeout => "timeout",
        LimitExceeded => "limit_exceeded",
        Error => "error",
    }
}

label_values! {
    /// The `tier` label of executions: the language's interpreter running
    /// the function's source (0), or the function's own component (1).
    Tier {
        Interpreted => "0",
        Compiled => "1",
    }
}

label_values! {
    /// The `outcome` label of `lambda_tier_ups_total`.
    TierUpOutcome {
        Ok => "ok",
        Failed => "failed",
    }
}

/// The `store` label of `lambda_integrity_failures_total`.
pub const INTEGRITY_STORES: [&str; 2] = ["artifact", "native_code"];

/// The `start` label of `lambda_instances_started_total`, in the order of
/// [`CountedElsewhere::instances_started`].
pub const INSTANCE_STARTS: [&str; 2] = ["fresh", "warm"];
/// Builds take seconds to minutes.
const BUILD_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// What the runtime and the stores count on their own, read at each
/// scrape ([`Metrics::read_at_scrape`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct CountedElsewhere {
    pub compiles: u64,
    pub compile_seconds: f64,
    /// By [`INTEGRITY_STORES`].
    pub integrity_failures: [u64; 2],
    /// Executions by how their instance started, by [`INSTANCE_STARTS`].
    pub instances_started: [u64; 2],
}

/// A collector of [`CountedElsewhere`]: the values are read when
/// Prometheus scrapes, never copied into counters of ours (copying by
/// read-then-add over-counted for good when two scrapes overlapped).
struct ReadAtScrape {
    read: Box<dyn Fn() -> CountedElsewhere + Send + Sync>,
    /// Only their descriptions are used: each scrape builds its own.
    templates: ElsewhereMetrics,
}

/// The metrics of [`CountedElsewhere`].
struct ElsewhereMetrics {
    compiles: IntCounter,
    compile_seconds: Counter,
    integrity_failures: IntCounterVec,
    instances_started: IntCounterVec,
}

impl ElsewhereMetrics {
    fn new() -> Self {
        Self {
            compiles: IntCounter::new(
                "lambda_component_compiles_total",
                "Components compiled to native code (an AOT cache hit does not count)",
            )
            .expect("valid metric"),
            compile_seconds: Counter::new(
                "lambda_component_compile_seconds_total",
                "Time spent compiling components to native code",
            )
            .expect("valid metric"),
            integrity_failures: IntCounterVec::new(
                Opts::new(
                    "lambda_integrity_failures_total",
                    "Stored artifacts (store=artifact) and AOT entries (store=native_code) refused for a seal that did not match",
                ),
                &["store"],
            )
            .expect("valid metric"),
            instances_started: IntCounterVec::new(
                Opts::new(
                    "lambda_instances_started_total",
                    "Executions by their instance: instantiated fresh, or a warm instance of the same caller and function version",
                ),
                &["start"],
            )
            .expect("valid metric"),
        }
    }
}

impl prometheus::core::Collector for ReadAtScrape {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let t = &self.templates;
        let mut descs = t.compiles.desc();
        descs.extend(t.compile_seconds.desc());
        descs.extend(t.integrity_failures.desc());
        descs.extend(t.instances_started.desc());
        descs
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let now = (self.read)();
        // Metrics of this scrape alone, holding the values read now.
        let fresh = ElsewhereMetrics::new();
        fresh.compiles.inc_by(now.compiles);
        fresh.compile_seconds.inc_by(now.compile_seconds);
        for (store, count) in INTEGRITY_STORES.iter().zip(now.integrity_failures) {
            fresh
                .integrity_failures
                .with_label_values(&[store])
                .inc_by(count);
        }
        for (start, count) in INSTANCE_STARTS.iter().zip(now.instances_started) {
            fresh
                .instances_started
                .with_label_values(&[start])
                .inc_by(count);
        }
        let mut families = fresh.compiles.collect();
        families.extend(fresh.compile_seconds.collect());
        families.extend(fresh.integrity_failures.collect());
        families.extend(fresh.instances_started.collect());
        families
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        }
        let counter = |name: &str, help: &str| {
            register(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            register(
                &registry,
                HistogramVec::new(opts, labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        Self {
            http_requests: counter_vec(
                "lambda_http_requests_total",
                "HTTP requests served, by route and status",
                &["endpoint", "status"],
            ),
            http_duration: histogram_vec(
                "lambda_http_request_duration_seconds",
                "Time to answer an HTTP request",
                &["endpoint"],
                LATENCY_BUCKETS,
            ),
            executions: counter_vec(
                "lambda_executions_total",
                "Function executions, by language, tier and outcome",
                &["language", "tier", "outcome"],
            ),
            execution_duration: histogram_vec(
                "lambda_execution_duration_seconds",
                "Time of one execution: instantiate and call",
                &["language", "tier"],
                LATENCY_BUCKETS,
            ),
            cache_hits: counter(
                "lambda_cache_hits_total",
                "Executions answered from the result cache",
            ),
            cache_misses: counter(
                "lambda_cache_misses_total",
                "Executions the result cache did not hold",
            ),
            sessions_active: gauge("lambda_sessions_active", "Live sessions"),
            sessions_created: counter("lambda_sessions_created_total", "Sessions initialized"),
            builds: counter_vec(
                "lambda_component_builds_total",
                "Source-to-component builds that ran a toolchain, by language and outcome",
                &["language", "outcome"],
            ),
            build_duration: histogram_vec(
                "lambda_component_build_duration_seconds",
                "Time of a toolchain build",
                &["language"],
                BUILD_BUCKETS,
            ),
            tier_ups: counter_vec(
                "lambda_tier_ups_total",
                "Background builds of a function's own component (tier 1) after it started on its language's interpreter (tier 0), by language and outcome",
                &["language", "outcome"],
            ),
            tier_up_duration: histogram_vec(
                "lambda_tier_up_duration_seconds",
                "Time from a function's registration on the interpreter (tier 0) to its own component (tier 1) running",
                &["language"],
                BUILD_BUCKETS,
            ),
            log_records_dropped: counter(
                "lambda_log_records_dropped_total",
                "Request, error and session log records that could not be queued",
            ),
            log_records_quarantined: counter(
                "lambda_log_records_quarantined_total",
                "Log records the database refused for their values, left out of their batch",
            ),
            instances_in_use: gauge("lambda_instances_in_use", "Instances executing now"),
            warm_instances_idle: gauge(
                "lambda_warm_instances_idle",
                "Warm instances waiting for their caller's next execution of the same function version",
            ),
            execution_processes_running: gauge(
                "lambda_execution_processes_running",
                "Child processes running fresh instances of large components now",
            ),
            execution_processes_started: gauge(
                "lambda_execution_processes_started",
                "Child processes started to run fresh instances since the host started (beyond the running ones: replaced after they died)",
            ),
            pool_size: gauge(
                "lambda_instance_pool_size",
                "Instances that may execute at once",
            ),
            loaded_components: gauge(
                "lambda_loaded_components",
                "Functions loaded in memory, ready to instantiate",
            ),
            loaded_component_bytes: gauge(
                "lambda_loaded_component_bytes",
                "Summed size of the loaded functions' components (bounded by --loaded-components-mb)",
            ),
            registry,
        }
        .with_series_at_zero()
    }

    /// Creates every language × outcome series at zero. A counter that
    /// first appears at 1 hides that first event from `rate()` and
    /// `increase()`: a replica's first build would never show.
    fn with_series_at_zero(self) -> Self {
        for language in Language::ALL {
            let language = language.as_str();
            for tier in Tier::ALL {
                for outcome in ExecutionOutcome::ALL {
                    self.executions
                        .with_label_values(&[language, tier.as_str(), outcome.as_str()]);
                }
                self.execution_duration
                    .with_label_values(&[language, tier.as_str()]);
            }
            for outcome in BuildOutcome::ALL {
                self.builds.with_label_values(&[language, outcome.as_str()]);
            }
            for outcome in TierUpOutcome::ALL {
                self.tier_ups
                    .with_label_values(&[language, outcome.as_str()]);
            }
            self.build_duration.with_label_values(&[language]);
            self.tier_up_duration.with_label_values(&[language]);
        }
        self
    }

    /// Registers what other parts of the host count (see
    /// [`CountedElsewhere`]); `read` runs at every scrape. Called once.
    pub fn read_at_scrape(&self, read: impl Fn() -> CountedElsewhere + Send + Sync + 'static) {
        self.registry
            .register(Box::new(ReadAtScrape {
                read: Box::new(read),
                templates: ElsewhereMetrics::new(),
            }))
            .expect("read_at_scrape is called once");
    }

    /// Counts one execution of `language` with its outcome.
    pub fn count_execution(&self, language: Language, tier: Tier, outcome: ExecutionOutcome) {
        self.executions
            .with_label_values(&[language.as_str(), tier.as_str(), outcome.as_str()])
            .inc();
    }

    /// Counts one toolchain build of `language` with its outcome.
    pub fn count_build(&self, language: Language, outcome: BuildOutcome) {
        self.builds
            .with_label_values(&[language.as_str(), outcome.as_str()])
            .inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encoding metrics into memory cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_and_outcome_is_exported_from_the_start() {
        let text = Metrics::new().render();
        for language in ["nodejs", "python", "rust"] {
            assert!(
                text.contains(&format!(
                    "lambda_component_builds_total{{language=\"{language}\",outcome=\"ok\"}} 0"
                )),
                "{text}"
            );
            for tier in ["0", "1"] {
                assert!(
                    text.contains(&format!(
                        "lambda_executions_total{{language=\"{language}\",outcome=\"runtime_error\",tier=\"{tier}\"}} 0"
                    )),
                    "{text}"
                );
            }
        }
    }
}
