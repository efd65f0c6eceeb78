//! The web servers behind the balancer: health with rise/fall, active requests, selection.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::config::{Algorithm, HttpConfig};
use crate::metrics::{HttpServerSeries, Metrics};
use crate::monitor::Hysteresis;
use crate::router::{Balancer, RoundRobin};

#[derive(Debug)]
pub struct HttpServer {
    pub name: String,
    pub address: String,
    pub weight: u32,
    pub backup: bool,
    up: AtomicBool,
    hysteresis: Mutex<Hysteresis>,
    /// Requests being served by this server now.
    pub active: AtomicUsize,
    /// `max_connections`: one permit per request in flight; absent when unlimited.
    pub slots: Option<Arc<Semaphore>>,
    pub metrics: HttpServerSeries,
}

impl HttpServer {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records one check (active or passive); logs and returns when the server changed sides.
    pub fn observe(&self, good: bool, why: &str) {
        let Ok(mut h) = self.hysteresis.lock() else {
            return;
        };
        if let Some(up) = h.observe(good) {
            self.up.store(up, Ordering::Relaxed);
            self.metrics.up.set(if up { 1.0 } else { 0.0 });
            if up {
                tracing::info!(server = %self.name, "HTTP server up");
            } else {
                tracing::warn!(server = %self.name, reason = %why, "HTTP server down");
            }
        }
    }
}

#[derive(Debug)]
pub struct Servers {
    pub list: Vec<Arc<HttpServer>>,
    algorithm: Algorithm,
    rotation: RoundRobin,
}

impl Servers {
    /// The servers of `config`. A server that `previous` (the configuration being replaced by
    /// a reload) had at the same address keeps its health, so a reload neither sends traffic
    /// to a server known to be down nor takes a healthy one out.
    pub fn new(config: &HttpConfig, metrics: &Metrics, previous: Option<&Servers>) -> Servers {
        let list = config
            .servers
            .iter()
            .map(|s| {
                let s = s.get_ref();
                let known =
                    previous.and_then(|p| p.list.iter().find(|o| o.name == s.name && o.address == s.address));
                let mut hysteresis = Hysteresis::new(config.health.rise, config.health.fall);
                let up = known.is_none_or(|o| o.is_up());
                if !up {
                    hysteresis = Hysteresis::new_down(config.health.rise, config.health.fall);
                }
                let series = metrics.http_server(&s.name);
                series.up.set(if up { 1.0 } else { 0.0 });
                Arc::new(HttpServer {
                    name: s.name.clone(),
                    address: s.address.clone(),
                    weight: s.weight.max(1),
                    backup: s.backup,
                    up: AtomicBool::new(up),
                    hysteresis: Mutex::new(hysteresis),
                    active: AtomicUsize::new(0),
                    slots: (s.max_connections > 0).then(|| Arc::new(Semaphore::new(s.max_connections))),
                    metrics: series,
                })
            })
            .collect();
        Servers { list, algorithm: config.algorithm, rotation: RoundRobin::default() }
    }

    /// Servers to try for one request, best first: the algorithm's pick among healthy active
    /// servers (backups when none is up), then the others as redispatch targets.
    pub fn order(&self) -> Vec<usize> {
        let up = |backup: bool| -> Vec<usize> {
            (0..self.list.len()).filter(|&i| self.list[i].is_up() && self.list[i].backup == backup).collect()
        };
        let mut pool = up(false);
        if pool.is_empty() {
            pool = up(true);
        }
        if pool.is_empty() {
            return pool;
        }
        let first = match self.algorithm {
            Algorithm::RoundRobin => self.weighted_round_robin(&pool),
            Algorithm::LeastConnections => self.least_loaded(&pool),
            Algorithm::RandomTwo => {
                let a = pool[rand::random_range(0..pool.len())];
                let b = pool[rand::random_range(0..pool.len())];
                self.least_loaded(&[a, b])
            }
        };
        // The pick first, the others after it in rotation order (one allocation per request).
        if let Some(at) = pool.iter().position(|&i| i == first) {
            pool.rotate_left(at);
        }
        pool
    }

    fn weighted_round_robin(&self, pool: &[usize]) -> usize {
        if pool.iter().all(|&i| self.list[i].weight == 1) {
            return self.rotation.next(pool.len(), 0).map_or(pool[0], |at| pool[at]);
        }
        let slots: Vec<usize> =
            pool.iter().flat_map(|&i| std::iter::repeat_n(i, self.list[i].weight as usize)).collect();
        self.rotation.next(slots.len(), 0).map_or(pool[0], |at| slots[at])
    }

    fn least_loaded(&self, pool: &[usize]) -> usize {
        let load =
            |i: usize| self.list[i].active.load(Ordering::Relaxed) as f64 / f64::from(self.list[i].weight);
        pool.iter().copied().min_by(|a, b| load(*a).total_cmp(&load(*b))).unwrap_or(pool[0])
    }
}
