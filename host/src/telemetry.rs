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
    pub compiles: IntCounter,
    pub compile_seconds: Counter,
    /// Stored artifacts and AOT entries refused because their seal did not
    /// match: someone other than a host wrote them, or they were damaged.
    pub integrity_failures: IntCounterVec,
    /// Log records that could not be queued for the database: counted and
    /// reported, never dropped silently.
    pub log_records_dropped: IntCounter,
    pub log_records_quarantined: IntCounter,
    pub instances_in_use: IntGauge,
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

/// The `outcome` label of `lambda_executions_total`.
pub const EXECUTION_OUTCOMES: &[&str] = &[
    "ok",
    "runtime_error",
    "timeout",
    "out_of_memory",
    "error",
    "overloaded",
    "rate_limited",
];
/// The `outcome` label of `lambda_component_builds_total`.
pub const BUILD_OUTCOMES: &[&str] = &["ok", "compile_error", "timeout", "limit_exceeded", "error"];
/// The `store` label of `lambda_integrity_failures_total`.
pub const INTEGRITY_STORES: &[&str] = &["artifact", "native_code"];
/// Builds take seconds to minutes.
const BUILD_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

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
                "Function executions, by language and outcome",
                &["language", "outcome"],
            ),
            execution_duration: histogram_vec(
                "lambda_execution_duration_seconds",
                "Time of one execution: instantiate and call",
                &["language"],
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
            compiles: counter(
                "lambda_component_compiles_total",
                "Components compiled to native code (an AOT cache hit does not count)",
            ),
            compile_seconds: register(
                &registry,
                Counter::new(
                    "lambda_component_compile_seconds_total",
                    "Time spent compiling components to native code",
                )
                .expect("valid metric"),
            ),
            integrity_failures: counter_vec(
                "lambda_integrity_failures_total",
                "Stored artifacts (store=artifact) and AOT entries (store=native_code) refused for a seal that did not match",
                &["store"],
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
            for outcome in EXECUTION_OUTCOMES {
                self.executions.with_label_values(&[language, outcome]);
            }
            for outcome in BUILD_OUTCOMES {
                self.builds.with_label_values(&[language, outcome]);
            }
            self.execution_duration.with_label_values(&[language]);
            self.build_duration.with_label_values(&[language]);
        }
        for store in INTEGRITY_STORES {
            self.integrity_failures.with_label_values(&[store]);
        }
        self
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
            assert!(
                text.contains(&format!(
                    "lambda_executions_total{{language=\"{language}\",outcome=\"runtime_error\"}} 0"
                )),
                "{text}"
            );
        }
    }
}
