//! The server's counters, written as Prometheus text at `GET /metrics`: requests by route and
//! status, latency histograms by route, tokens in and out, queue depth, running requests,
//! cancellations and time-outs, and per guardrail the answers it gated and the tokens it clamped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct GuardCounts {
    fired: u64,
    clamped: u64,
}

/// Every counter the server keeps.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    guards: Mutex<BTreeMap<String, GuardCounts>>,
    tokens_in: AtomicU64,
    tokens_out: AtomicU64,
    cancelled: AtomicU64,
    timed_out: AtomicU64,
    running: AtomicUsize,
    decode_steps: AtomicU64,
    decode_rows: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// Counts a request to `route` answered with `status` after `secs`.
    pub fn request(&self, route: &str, status: u16, secs: f64) {
        *lock(&self.requests)
            .entry((route.to_string(), status))
            .or_default() += 1;
        let mut latency = lock(&self.latency);
        let h = latency.entry(route.to_string()).or_default();
        for (count, &bound) in h.counts.iter_mut().zip(&BUCKETS) {
            if secs <= bound {
                *count += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Counts prompt tokens read.
    pub fn tokens_in(&self, n: usize) {
        self.tokens_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts tokens generated.
    pub fn tokens_out(&self, n: usize) {
        self.tokens_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts a request whose client went away.
    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request that ran past the time limit.
    pub fn timed_out(&self) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets how many requests are decoding.
    pub fn set_running(&self, n: usize) {
        self.running.store(n, Ordering::Relaxed);
    }

    /// Counts one batched decoding step over `rows` requests.
    pub fn decode_step(&self, rows: usize) {
        self.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.decode_rows.fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// Counts one answer of guardrail `name`: whether its gate was on (while acting) and how
    /// many tokens it clamped.
    pub fn guard(&self, name: &str, fired: bool, clamped: usize) {
        let mut guards = lock(&self.guards);
        let g = guards.entry(name.to_string()).or_default();
        g.fired += u64::from(fired);
        g.clamped += clamped as u64;
    }

    /// Requests cancelled so far (clients that went away).
    pub fn cancelled_count(&self) -> u64 {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition, with `queued` requests waiting and the configured
    /// guardrail names (so each has a line before it first fires).
    pub fn render(&self, queued: usize, guard_names: &[String]) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            name.to_string()
        };
        let name = family(
            "dsg_requests_total",
            "counter",
            "HTTP requests by route and status.",
        );
        let mut text = String::new();
        for ((route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(text, "{name}{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        let name = family(
            "dsg_request_duration_seconds",
            "histogram",
            "Time to the response head, by route (streams: to the first byte).",
        );
        for (route, h) in lock(&self.latency).iter() {
            for (count, bound) in h.counts.iter().zip(BUCKETS) {
                let _ = writeln!(
                    text,
                    "{name}_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                text,
                "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(text, "{name}_sum{{route=\"{route}\"}} {}", h.sum);
            let _ = writeln!(text, "{name}_count{{route=\"{route}\"}} {}", h.count);
        }
        let scalars = [
            (
                "dsg_prompt_tokens_total",
                "counter",
                "Prompt tokens read.",
                self.tokens_in.load(Ordering::Relaxed),
            ),
            (
                "dsg_generated_tokens_total",
                "counter",
                "Tokens generated.",
                self.tokens_out.load(Ordering::Relaxed),
            ),
            (
                "dsg_queue_depth",
                "gauge",
                "Requests waiting for the model worker.",
                queued as u64,
            ),
            (
                "dsg_running_requests",
                "gauge",
                "Requests in the decoding batch.",
                self.running.load(Ordering::Relaxed) as u64,
            ),
            (
                "dsg_decode_steps_total",
                "counter",
                "Batched decoding steps.",
                self.decode_steps.load(Ordering::Relaxed),
            ),
            (
                "dsg_decode_rows_total",
                "counter",
                "Requests decoded, summed over steps (over the steps: the mean batch).",
                self.decode_rows.load(Ordering::Relaxed),
            ),
            (
                "dsg_cancelled_total",
                "counter",
                "Requests stopped because the client went away.",
                self.cancelled.load(Ordering::Relaxed),
            ),
            (
                "dsg_timeouts_total",
                "counter",
                "Requests that ran past the time limit.",
                self.timed_out.load(Ordering::Relaxed),
            ),
        ];
        for (metric, kind, help, value) in scalars {
            let name = family(metric, kind, help);
            let _ = writeln!(text, "{name} {value}");
        }
        let guards = lock(&self.guards);
        let count = |n: &str, f: fn(&GuardCounts) -> u64| guards.get(n).map_or(0, f);
        let fired = family(
            "dsg_gate_fired_total",
            "counter",
            "Answers during which a guardrail acting on them had its gate on at the end.",
        );
        let clamped = family(
            "dsg_clamped_tokens_total",
            "counter",
            "Tokens (prompt and answer) a guardrail clamped.",
        );
        for n in guard_names {
            let _ = writeln!(
                text,
                "{fired}{{guardrail=\"{n}\"}} {}",
                count(n, |g| g.fired)
            );
            let _ = writeln!(
                text,
                "{clamped}{{guardrail=\"{n}\"}} {}",
                count(n, |g| g.clamped)
            );
        }
        // HELP/TYPE lines first, then samples, grouped per family by name order.
        let mut lines: Vec<&str> = out.lines().chain(text.lines()).collect();
        lines.sort_by_key(|l| family_of(l));
        lines.join("\n") + "\n"
    }
}

/// The metric family a line belongs to, and whether it is a sample (comments first).
fn family_of(line: &str) -> (String, bool) {
    if let Some(rest) = line.strip_prefix("# ") {
        let name = rest.split_whitespace().nth(1).unwrap_or("");
        return (name.to_string(), false);
    }
    let name = line.split(['{', ' ']).next().unwrap_or("");
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|b| b.ends_with("_seconds"))
        .unwrap_or(name);
    (base.to_string(), true)
}
