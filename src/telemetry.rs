//! The metrics registry: a leaf that every component registers its own
//! series with, and that `/metrics` renders.
//!
//! Each series is counted once, in an atomic the component holds a handle
//! to; the JSON API reads the same handle, so `/api/summary` and `/metrics`
//! can never disagree. Values that live elsewhere (kernel drop counters,
//! sizes of policy tables) are registered as functions evaluated at scrape
//! time, so nothing has to copy them into a gauge on a timer.
//!
//! Written here rather than taken from `metrics-exporter-prometheus`: that
//! exporter's handles are write-only (the API could not read what
//! `/metrics` shows, so every event used to be counted twice), its
//! histograms buffer every sample until upkeep, and its label escaping
//! drops a backslash that precedes a quote. The text format itself is a
//! few lines. The registry implements [`metrics::Recorder`], so crates that
//! report through the `metrics` facade (the process collector) land here
//! too.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use metrics::{Key, KeyName, Metadata, SharedString, Unit};
use parking_lot::Mutex;

/// A monotonic counter. Clones share the value.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Relaxed);
        }
    }

    /// Adds one.
    #[inline]
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    /// The current value.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A gauge holding an `f64`. Clones share the value.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// Sets the value.
    pub(crate) fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Relaxed);
    }

    /// Adds `d` (negative to subtract).
    pub(crate) fn add(&self, d: f64) {
        let _ = self.0.fetch_update(Relaxed, Relaxed, |b| Some((f64::from_bits(b) + d).to_bits()));
    }

    /// The current value.
    pub(crate) fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
}

/// A histogram with fixed buckets, counted in atomics: values are added a
/// batch at a time ([`Histogram::record`] of a [`HistogramBatch`]), so a
/// hot path pays one atomic add per non-empty bucket per batch, not per
/// value. Values are integers in a unit of the caller's choice (`scale`
/// of them make one of the rendered unit: 1e9 for nanoseconds rendered as
/// seconds).
#[derive(Debug, Clone)]
pub(crate) struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds in the rendered unit, ascending (+Inf implied).
    bounds: &'static [f64],
    /// The same bounds in the recorded unit.
    limits: Box<[u64]>,
    scale: f64,
    /// Per bucket (not cumulative), the last one +Inf.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// Values counted locally before they go into a [`Histogram`] at once.
#[derive(Debug, Clone)]
pub(crate) struct HistogramBatch {
    counts: [u64; MAX_BUCKETS],
    sum: u64,
    n: u64,
}

/// Most buckets of a histogram (+Inf included).
pub(crate) const MAX_BUCKETS: usize = 24;

impl Histogram {
    /// A histogram that counts nowhere visible (tests and tools).
    pub(crate) fn detached(bounds: &'static [f64], scale: f64) -> Histogram {
        Histogram::new(bounds, scale)
    }

    fn new(bounds: &'static [f64], scale: f64) -> Histogram {
        assert!(bounds.len() < MAX_BUCKETS, "at most {} bounds", MAX_BUCKETS - 1);
        Histogram(Arc::new(HistogramInner {
            bounds,
            limits: bounds.iter().map(|b| (b * scale).round() as u64).collect(),
            scale,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }))
    }

    /// An empty batch for this histogram.
    pub(crate) fn batch(&self) -> HistogramBatch {
        HistogramBatch { counts: [0; MAX_BUCKETS], sum: 0, n: 0 }
    }

    /// Counts `v` (in the recorded unit) `n` times into `b`.
    #[inline]
    pub(crate) fn count_n(&self, b: &mut HistogramBatch, v: u64, n: u64) {
        let i = self.0.limits.partition_point(|&l| l < v);
        b.counts[i] += n;
        b.sum = b.sum.saturating_add(v.saturating_mul(n));
        b.n += n;
    }

    /// Adds a batch counted with [`Self::count_n`], and empties it.
    pub(crate) fn record(&self, b: &mut HistogramBatch) {
        if b.n == 0 {
            return;
        }
        for (c, n) in self.0.counts.iter().zip(&b.counts) {
            if *n > 0 {
                c.fetch_add(*n, Relaxed);
            }
        }
        self.0.sum.fetch_add(b.sum, Relaxed);
        *b = self.batch();
    }

    /// What it has counted.
    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.0.bounds,
            counts: self.0.counts.iter().map(|c| c.load(Relaxed)).collect(),
            sum: self.0.sum.load(Relaxed) as f64 / self.0.scale,
        }
    }
}

/// A histogram's counts at one moment: per bucket (not cumulative, one
/// more than `bounds`, the last +Inf), and the sum in the rendered unit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistogramSnapshot {
    /// Upper bounds, ascending.
    pub(crate) bounds: &'static [f64],
    /// Counts per bucket.
    pub(crate) counts: Vec<u64>,
    /// Sum of the values.
    pub(crate) sum: f64,
}

/// Where a series' value comes from.
enum Source {
    /// Buckets, sum and count.
    Histogram(Histogram),
    Counter(Counter),
    Gauge(Gauge),
    /// Evaluated at scrape time; must be monotonic.
    CounterFn(Box<dyn Fn() -> u64 + Send + Sync>),
    /// Evaluated at scrape time.
    GaugeFn(Box<dyn Fn() -> f64 + Send + Sync>),
}

struct Series {
    /// Rendered label pairs, `a="x",b="y"` (empty without labels).
    labels: String,
    source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

struct Family {
    name: String,
    help: String,
    kind: Kind,
    series: Vec<Series>,
}

/// The registry of one server. Families render in registration order.
#[derive(Default)]
pub(crate) struct Registry {
    families: Mutex<Vec<Family>>,
    process: metrics_process::Collector,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("families", &self.families.lock().len()).finish()
    }
}

/// Escapes a label value for the text format (backslash, quote, newline).
pub(crate) fn escape_label(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").into()
}

fn label_string(labels: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"{}\"", escape_label(v));
    }
    s
}

impl Registry {
    /// An empty registry with the process collector described.
    pub(crate) fn new() -> Arc<Registry> {
        let r = Arc::new(Registry::default());
        metrics::with_local_recorder(&*r, || r.process.describe());
        r
    }

    /// Registers (or finds) the series `name{labels}` and returns its source,
    /// made by `make` when new.
    fn series<T>(
        &self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &str,
        make: impl FnOnce() -> (Source, T),
        existing: impl FnOnce(&Source) -> Option<T>,
    ) -> T {
        let mut fams = self.families.lock();
        let fam = match fams.iter().position(|f| f.name == name) {
            Some(i) => &mut fams[i],
            None => {
                fams.push(Family {
                    name: name.to_string(),
                    help: help.to_string(),
                    kind,
                    series: Vec::new(),
                });
                let last = fams.len() - 1;
                &mut fams[last]
            }
        };
        if fam.help.is_empty() {
            fam.help = help.to_string();
        }
        if let Some(s) = fam.series.iter().find(|s| s.labels == labels) {
            if let Some(t) = existing(&s.source) {
                return t;
            }
        }
        let (source, t) = make();
        fam.series.retain(|s| s.labels != labels);
        fam.series.push(Series { labels: labels.to_string(), source });
        t
    }

    /// The counter `name{labels}`, starting at 0 (so rates work from the
    /// first scrape). Registering it again returns the same counter.
    pub(crate) fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        self.series(
            name,
            help,
            Kind::Counter,
            &label_string(labels),
            || {
                let c = Counter::default();
                (Source::Counter(c.clone()), c)
            },
            |s| match s {
                Source::Counter(c) => Some(c.clone()),
                _ => None,
            },
        )
    }

    /// The gauge `name{labels}`.
    pub(crate) fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        self.series(
            name,
            help,
            Kind::Gauge,
            &label_string(labels),
            || {
                let g = Gauge::default();
                (Source::Gauge(g.clone()), g)
            },
            |s| match s {
                Source::Gauge(g) => Some(g.clone()),
                _ => None,
            },
        )
    }

    /// The histogram `name{labels}` with upper bounds `bounds` (rendered
    /// unit, ascending), recording integers of which `scale` make one
    /// rendered unit. Registering it again returns the same histogram.
    pub(crate) fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        bounds: &'static [f64],
        scale: f64,
    ) -> Histogram {
        self.series(
            name,
            help,
            Kind::Histogram,
            &label_string(labels),
            || {
                let h = Histogram::new(bounds, scale);
                (Source::Histogram(h.clone()), h)
            },
            |s| match s {
                Source::Histogram(h) => Some(h.clone()),
                _ => None,
            },
        )
    }

    /// A counter whose value `f` reads at scrape time from somewhere else
    /// (it must never decrease).
    pub(crate) fn counter_fn(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        f: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        let source = Source::CounterFn(Box::new(f));
        self.series(name, help, Kind::Counter, &label_string(labels), || (source, ()), |_| None);
    }

    /// A gauge whose value `f` computes at scrape time.
    pub(crate) fn gauge_fn(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        f: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        let source = Source::GaugeFn(Box::new(f));
        self.series(name, help, Kind::Gauge, &label_string(labels), || (source, ()), |_| None);
    }

    /// Appends every family in the Prometheus text format (process metrics
    /// refreshed first).
    pub(crate) fn render(&self, out: &mut String) {
        metrics::with_local_recorder(self, || self.process.collect());
        let fams = self.families.lock();
        for f in fams.iter() {
            let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
            let _ =
                writeln!(out, "# HELP {} {help}\n# TYPE {} {}", f.name, f.name, f.kind.as_str());
            for s in &f.series {
                render_series(out, &f.name, &s.labels, &s.source);
            }
        }
    }
}

/// One sample line: `name{labels} value`, with an extra label when given.
fn line(out: &mut String, name: &str, labels: &str, extra: Option<(&str, &str)>, v: f64) {
    out.push_str(name);
    if !labels.is_empty() || extra.is_some() {
        out.push('{');
        out.push_str(labels);
        if let Some((k, x)) = extra {
            if !labels.is_empty() {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{x}\"");
        }
        out.push('}');
    }
    out.push(' ');
    push_number(out, v);
    out.push('\n');
}

/// A sample value the way Prometheus parses it.
pub(crate) fn push_number(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// The lines of one histogram series: cumulative buckets, sum, count.
pub(crate) fn render_histogram(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot) {
    let (bucket, sum, count) =
        (format!("{name}_bucket"), format!("{name}_sum"), format!("{name}_count"));
    let mut le = String::new();
    let mut cumulative = 0;
    for (i, n) in h.counts.iter().enumerate() {
        cumulative += n;
        le.clear();
        match h.bounds.get(i) {
            Some(b) => push_number(&mut le, *b),
            None => le.push_str("+Inf"),
        }
        line(out, &bucket, labels, Some(("le", &le)), cumulative as f64);
    }
    line(out, &sum, labels, None, h.sum);
    line(out, &count, labels, None, cumulative as f64);
}

fn render_series(out: &mut String, name: &str, labels: &str, source: &Source) {
    match source {
        Source::Histogram(h) => render_histogram(out, name, labels, &h.snapshot()),
        Source::Counter(c) => line(out, name, labels, None, c.get() as f64),
        Source::Gauge(g) => line(out, name, labels, None, g.get()),
        Source::CounterFn(f) => line(out, name, labels, None, f() as f64),
        Source::GaugeFn(f) => line(out, name, labels, None, f()),
    }
}

fn key_labels(key: &Key) -> Vec<(String, String)> {
    key.labels().map(|l| (l.key().to_string(), l.value().to_string())).collect()
}

fn key_label_string(key: &Key) -> String {
    let pairs = key_labels(key);
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    label_string(&refs)
}

/// Crates reporting through the `metrics` facade (the process collector)
/// write into the same registry.
impl metrics::Recorder for Registry {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, help: SharedString) {
        self.describe(key.as_str(), Kind::Counter, &help);
    }

    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, help: SharedString) {
        self.describe(key.as_str(), Kind::Gauge, &help);
    }

    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> metrics::Counter {
        let c = self.series(
            key.name(),
            "",
            Kind::Counter,
            &key_label_string(key),
            || {
                let c = Counter::default();
                (Source::Counter(c.clone()), c)
            },
            |s| match s {
                Source::Counter(c) => Some(c.clone()),
                _ => None,
            },
        );
        metrics::Counter::from_arc(c.0)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> metrics::Gauge {
        let g = self.series(
            key.name(),
            "",
            Kind::Gauge,
            &key_label_string(key),
            || {
                let g = Gauge::default();
                (Source::Gauge(g.clone()), g)
            },
            |s| match s {
                Source::Gauge(g) => Some(g.clone()),
                _ => None,
            },
        );
        metrics::Gauge::from_arc(g.0)
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

impl Registry {
    /// Creates the family `name` (without series) so its help is known.
    fn describe(&self, name: &str, kind: Kind, help: &str) {
        let mut fams = self.families.lock();
        match fams.iter_mut().find(|f| f.name == name) {
            Some(f) => f.help = help.to_string(),
            None => fams.push(Family {
                name: name.to_string(),
                help: help.to_string(),
                kind,
                series: Vec::new(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_by_batch_and_renders_cumulative_buckets() {
        static BOUNDS: &[f64] = &[0.001, 0.01, 1.0];
        let r = Registry::new();
        let h = r.histogram("fleetwire_test_seconds", "A test.", &[], BOUNDS, 1e9);
        let mut b = h.batch();
        // On a bound counts in its bucket (le is "less or equal").
        for ns in [500_000, 1_000_000, 1_000_001, 2_000_000_000] {
            h.count_n(&mut b, ns, 1);
        }
        let empty = h.snapshot();
        assert_eq!(empty.counts, [0, 0, 0, 0], "nothing before the batch is recorded");
        h.record(&mut b);
        h.record(&mut b);
        let snap = h.snapshot();
        assert_eq!(snap.counts, [2, 1, 0, 1]);
        assert!((snap.sum - 2.002500001).abs() < 1e-12);
        let mut out = String::new();
        r.render(&mut out);
        for want in [
            "# TYPE fleetwire_test_seconds histogram\n",
            "fleetwire_test_seconds_bucket{le=\"0.001\"} 2\n",
            "fleetwire_test_seconds_bucket{le=\"0.01\"} 3\n",
            "fleetwire_test_seconds_bucket{le=\"1\"} 3\n",
            "fleetwire_test_seconds_bucket{le=\"+Inf\"} 4\n",
            "fleetwire_test_seconds_count 4\n",
        ] {
            assert!(out.contains(want), "{want} in\n{out}");
        }
    }

    #[test]
    fn counting_a_value_n_times_at_once_is_counting_it_once_n_times() {
        static BOUNDS: &[f64] = &[0.001, 0.01, 1.0];
        let r = Registry::new();
        let (one, many) = (
            r.histogram("fleetwire_one_seconds", "A test.", &[], BOUNDS, 1e9),
            r.histogram("fleetwire_many_seconds", "A test.", &[], BOUNDS, 1e9),
        );
        let (mut a, mut b) = (one.batch(), many.batch());
        for (ns, n) in [(500_000, 3), (1_000_000, 1), (5_000_000, 7), (2_000_000_000, 2)] {
            for _ in 0..n {
                one.count_n(&mut a, ns, 1);
            }
            many.count_n(&mut b, ns, n);
        }
        one.record(&mut a);
        many.record(&mut b);
        assert_eq!(one.snapshot(), many.snapshot());
        assert_eq!(many.snapshot().counts, [4, 7, 0, 2]);
    }

    #[test]
    fn series_render_once_and_read_back() {
        let r = Registry::new();
        let a = r.counter("fleetwire_x_total", "X.", &[("transport", "udp")]);
        let b = r.counter("fleetwire_x_total", "X.", &[("transport", "quic")]);
        let again = r.counter("fleetwire_x_total", "X.", &[("transport", "udp")]);
        a.add(3);
        again.inc();
        b.add(2);
        assert_eq!(a.get(), 4, "registering twice gives the same counter");
        let g = r.gauge("fleetwire_g", "G.", &[]);
        g.set(1.5);
        g.add(-0.5);
        r.gauge_fn("fleetwire_f", "F.", &[], || 7.0);
        let mut out = String::new();
        r.render(&mut out);
        assert_eq!(out.matches("# TYPE fleetwire_x_total counter").count(), 1);
        assert!(out.contains("fleetwire_x_total{transport=\"udp\"} 4\n"), "{out}");
        assert!(out.contains("fleetwire_x_total{transport=\"quic\"} 2\n"), "{out}");
        assert!(out.contains("fleetwire_g 1\n"), "{out}");
        assert!(out.contains("fleetwire_f 7\n"), "{out}");
        assert!(out.contains("process_"), "process metrics come through the facade: {out}");
    }

    #[test]
    fn label_values_are_escaped() {
        let r = Registry::new();
        r.counter("fleetwire_y_total", "Y.", &[("name", "a\"b\\c\nd")]).inc();
        let mut out = String::new();
        r.render(&mut out);
        assert!(out.contains(r#"fleetwire_y_total{name="a\"b\\c\nd"} 1"#), "{out}");
    }
}
