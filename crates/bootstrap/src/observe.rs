//! Health, readiness and Prometheus metrics.
//!
//! A service registers named readiness [`Check`]s (e.g. `mqtt`, `database`) and flips them
//! from the tasks that actually see the dependency, so `/readyz` answers from memory and
//! never blocks on a probe. Counters and gauges are plain atomics rendered as Prometheus
//! text; the handful each service exports does not justify a metrics framework.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{HttpResponse, web};

/// Cheap to clone; every clone is the same registry.
#[derive(Clone)]
pub struct Observability {
    inner: Arc<Inner>,
}

struct Inner {
    service: &'static str,
    checks: Mutex<Vec<(&'static str, Arc<AtomicBool>)>>,
    metrics: Mutex<Vec<Metric>>,
}

struct Metric {
    /// Full series name, possibly with labels: `x_total{code="y"}`.
    series: String,
    help: &'static str,
    kind: &'static str,
    value: Value,
}

enum Value {
    Counter(Arc<AtomicU64>),
    Gauge(Arc<AtomicI64>),
}

/// A readiness condition, initially false.
#[derive(Clone)]
pub struct Check(Arc<AtomicBool>);

impl Check {
    pub fn set(&self, ok: bool) {
        self.0.store(ok, Ordering::Relaxed);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A monotonically increasing count.
#[derive(Clone)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Clone)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Observability {
    pub fn new(service: &'static str) -> Self {
        Self {
            inner: Arc::new(Inner {
                service,
                checks: Mutex::new(Vec::new()),
                metrics: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn service(&self) -> &'static str {
        self.inner.service
    }

    /// Registers a readiness check; `/readyz` is 200 only while all checks are true.
    pub fn check(&self, name: &'static str) -> Check {
        let flag = Arc::new(AtomicBool::new(false));
        self.inner.checks.lock().unwrap().push((name, flag.clone()));
        Check(flag)
    }

    /// Registers a counter. `name` is prefixed with `lentera_{service}_`; `labels` are
    /// rendered as given, e.g. `&[("code", "malformed_json")]`.
    pub fn counter(&self, name: &str, help: &'static str, labels: &[(&str, &str)]) -> Counter {
        let v = Arc::new(AtomicU64::new(0));
        self.register(name, help, labels, "counter", Value::Counter(v.clone()));
        Counter(v)
    }

    pub fn gauge(&self, name: &str, help: &'static str) -> Gauge {
        let v = Arc::new(AtomicI64::new(0));
        self.register(name, help, &[], "gauge", Value::Gauge(v.clone()));
        Gauge(v)
    }

    fn register(
        &self,
        name: &str,
        help: &'static str,
        labels: &[(&str, &str)],
        kind: &'static str,
        value: Value,
    ) {
        let mut series = format!("lentera_{}_{}", self.inner.service, name);
        if !labels.is_empty() {
            let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let _ = write!(series, "{{{}}}", parts.join(","));
        }
        self.inner.metrics.lock().unwrap().push(Metric {
            series,
            help,
            kind,
            value,
        });
    }

    /// True when every registered check is.
    pub fn ready(&self) -> bool {
        self.inner
            .checks
            .lock()
            .unwrap()
            .iter()
            .all(|(_, f)| f.load(Ordering::Relaxed))
    }

    /// `{"mqtt":true,"database":false}`.
    pub fn check_states(&self) -> serde_json::Value {
        let checks = self.inner.checks.lock().unwrap();
        serde_json::Value::Object(
            checks
                .iter()
                .map(|(n, f)| ((*n).to_owned(), f.load(Ordering::Relaxed).into()))
                .collect(),
        )
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let metrics = self.inner.metrics.lock().unwrap();
        let mut out = String::new();
        let mut last_base = "";
        for m in metrics.iter() {
            let base = m.series.split('{').next().unwrap_or(&m.series);
            if base != last_base {
                let _ = writeln!(out, "# HELP {base} {}\n# TYPE {base} {}", m.help, m.kind);
            }
            last_base = base;
            let _ = match &m.value {
                Value::Counter(v) => writeln!(out, "{} {}", m.series, v.load(Ordering::Relaxed)),
                Value::Gauge(v) => writeln!(out, "{} {}", m.series, v.load(Ordering::Relaxed)),
            };
        }
        let ready = self.ready() as u8;
        let _ = writeln!(
            out,
            "# HELP lentera_{s}_ready 1 when every readiness check passes\n# TYPE lentera_{s}_ready gauge\nlentera_{s}_ready {ready}",
            s = self.inner.service
        );
        out
    }

    /// Adds `/healthz`, `/readyz` and `/metrics` to an actix-web app.
    pub fn routes(&self) -> impl FnOnce(&mut web::ServiceConfig) + Clone + 'static {
        let obs = self.clone();
        move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(web::Data::new(obs))
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics));
        }
    }

    /// Serves only the admin endpoints, for services with no HTTP API of their own.
    /// Returns the bound address and the server, which stops on its own handle.
    pub fn serve_admin(&self, addr: &str) -> anyhow::Result<(SocketAddr, actix_web::dev::Server)> {
        let listener = TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        let routes = self.routes();
        let server =
            actix_web::HttpServer::new(move || actix_web::App::new().configure(routes.clone()))
                .workers(1)
                .disable_signals()
                .listen(listener)?
                .run();
        Ok((bound, server))
    }
}

async fn healthz(obs: web::Data<Observability>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok", "service": obs.service()}))
}

async fn readyz(obs: web::Data<Observability>) -> HttpResponse {
    let body = serde_json::json!({"ready": obs.ready(), "checks": obs.check_states()});
    if obs.ready() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(obs: web::Data<Observability>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(obs.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_and_readiness() {
        let obs = Observability::new("test");
        let ok = obs.counter("things_total", "Things.", &[("code", "ok")]);
        let bad = obs.counter("things_total", "Things.", &[("code", "bad")]);
        let g = obs.gauge("open", "Open things.");
        ok.add(3);
        bad.inc();
        g.set(7);
        let db = obs.check("database");
        let text = obs.render();
        assert!(text.contains("# TYPE lentera_test_things_total counter\n"));
        assert_eq!(text.matches("# HELP lentera_test_things_total").count(), 1);
        assert!(text.contains("lentera_test_things_total{code=\"ok\"} 3\n"));
        assert!(text.contains("lentera_test_things_total{code=\"bad\"} 1\n"));
        assert!(text.contains("lentera_test_open 7\n"));
        assert!(text.contains("lentera_test_ready 0\n"));
        assert!(!obs.ready());
        db.set(true);
        assert!(obs.ready());
    }
}
