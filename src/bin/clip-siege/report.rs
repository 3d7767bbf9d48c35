//! Watching an attack (honest calls, probes, the server's memory) and what it reports: rows,
//! losses and the attacker's sockets.

use super::*;

/// The HTTP and gRPC callers, the probes and the RSS sampler of one attack.
pub(crate) struct Watch {
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) tasks: JoinSet<()>,
    pub(crate) http: Calls,
    pub(crate) grpc: Calls,
    pub(crate) probe: Calls,
    pub(crate) health: Calls,
    /// /healthz on the HTTP port when probes go to a separate listener.
    pub(crate) http_healthz: Option<Calls>,
    pub(crate) rss_max_kib: Arc<Mutex<u64>>,
    pub(crate) peak_reset: bool,
    pub(crate) started: Instant,
    /// The server's RSS when the attack began (what earlier attacks left behind).
    pub(crate) rss_at_start_kib: Option<u64>,
}

/// Sleeps `d`, or less when `stop` turns true.
pub(crate) async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = until_stopped(stop) => {}
    }
}

/// Returns when `stop` turns true (or its sender is gone).
pub(crate) async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

pub(crate) fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

impl Watch {
    pub(crate) fn start(args: &Arc<Args>) -> Watch {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let (http, grpc, probe, health) = (
            Calls::default(),
            Calls::default(),
            Calls::default(),
            Calls::default(),
        );
        let probe_addr = args.probe_addr.unwrap_or(args.http_addr);
        let http_healthz = (probe_addr != args.http_addr).then(Calls::default);
        for c in 0..args.callers as u64 {
            for door in [0, 1] {
                let (args, mut stop) = (Arc::clone(args), stop_rx.clone());
                let calls: Calls = if door == 0 {
                    http.clone()
                } else {
                    grpc.clone()
                };
                tasks.spawn(async move {
                    let mut n = c * 1_000_000;
                    while !stopped(&stop) {
                        let t = Instant::now();
                        let r = if door == 0 {
                            small_http(&args, n).await
                        } else {
                            small_grpc(&args, n).await
                        };
                        calls.push(t, r);
                        n += 1;
                        pause(&mut stop, args.call_interval).await;
                    }
                });
            }
        }
        {
            let (args, mut stop) = (Arc::clone(args), stop_rx.clone());
            let (probe, health, healthz) = (
                Calls::clone(&probe),
                Calls::clone(&health),
                http_healthz.clone(),
            );
            tasks.spawn(async move {
                while !stopped(&stop) {
                    let t = Instant::now();
                    let probing = async {
                        let r = probe_http(&args, probe_addr, &args.probe_path).await;
                        probe.push(t, r);
                    };
                    let checking = async {
                        let r = probe_grpc_health(&args).await;
                        health.push(t, r);
                    };
                    let port = async {
                        if let Some(calls) = &healthz {
                            let r = probe_http(&args, args.http_addr, "/healthz").await;
                            calls.push(t, r);
                        }
                    };
                    tokio::join!(probing, checking, port);
                    let left = args.probe_interval.saturating_sub(t.elapsed());
                    pause(&mut stop, left).await;
                }
            });
        }
        let rss_max_kib = Arc::new(Mutex::new(0));
        let mut peak_reset = false;
        if let Some(pid) = args.pid {
            // Writing 5 to clear_refs resets VmHWM (Linux 4.0+).
            peak_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
            let (max, mut stop) = (Arc::clone(&rss_max_kib), stop_rx.clone());
            tasks.spawn(async move {
                while !stopped(&stop) {
                    if let Some(kib) = proc_status_kib(pid, "VmRSS:")
                        && let Ok(mut m) = max.lock()
                    {
                        *m = (*m).max(kib);
                    }
                    pause(&mut stop, Duration::from_millis(50)).await;
                }
            });
        }
        Watch {
            stop,
            tasks,
            http,
            grpc,
            probe,
            health,
            http_healthz,
            rss_max_kib,
            peak_reset,
            started: Instant::now(),
            rss_at_start_kib: args.pid.and_then(|pid| proc_status_kib(pid, "VmRSS:")),
        }
    }

    pub(crate) async fn finish(mut self, args: &Args, attack: String) -> Row {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let sampled = self.rss_max_kib.lock().map(|m| *m).unwrap_or(0);
        let peak_kib = args
            .pid
            .map(|pid| proc_status_kib(pid, "VmHWM:").unwrap_or(0).max(sampled));
        let mut notes = Vec::new();
        if let Some(kib) = self.rss_at_start_kib {
            notes.push(format!("RSS at the start {} MiB", kib >> 10));
        }
        Row {
            attack,
            seconds: self.started.elapsed().as_secs_f64(),
            http: self.http.stat(),
            grpc: self.grpc.stat(),
            probe: self.probe.stat(),
            health: self.health.stat(),
            http_healthz: self.http_healthz.map(|c| c.stat()),
            peak_rss_bytes: peak_kib.filter(|&k| k > 0).map(|k| k * 1024),
            peak_since_start: !self.peak_reset,
            lost: None,
            notes,
            missed: Vec::new(),
        }
    }
}

/// A `kB` field of /proc/PID/status.
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// Whether the process still runs (not gone, not a zombie).
pub(crate) fn alive(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    !status
        .lines()
        .any(|l| l.starts_with("State:") && (l.contains("Z (") || l.contains("X (")))
}

/// Waits until a small call on each door and a probe succeed; how long that took, or None when
/// it did not happen within --settle.
pub(crate) async fn settle(args: &Args) -> Option<Duration> {
    let started = Instant::now();
    let probe_addr = args.probe_addr.unwrap_or(args.http_addr);
    let mut n = 900_000_000;
    while started.elapsed() < args.settle {
        n += 1;
        let (h, g, p) = tokio::join!(
            small_http(args, n),
            small_grpc(args, n),
            probe_http(args, probe_addr, &args.probe_path)
        );
        if h.is_ok() && g.is_ok() && p.is_ok() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The results.

#[derive(Debug, Serialize)]
pub(crate) struct Lost {
    /// Items or collections lost or split; 0 is the target.
    pub(crate) count: u64,
    pub(crate) detail: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct Row {
    pub(crate) attack: String,
    pub(crate) seconds: f64,
    pub(crate) http: Stat,
    pub(crate) grpc: Stat,
    pub(crate) probe: Stat,
    pub(crate) health: Stat,
    pub(crate) http_healthz: Option<Stat>,
    pub(crate) peak_rss_bytes: Option<u64>,
    /// VmHWM could not be reset before the attack: the peak is the process's since it started.
    pub(crate) peak_since_start: bool,
    pub(crate) lost: Option<Lost>,
    pub(crate) notes: Vec<String>,
    /// The targets this attack missed.
    pub(crate) missed: Vec<String>,
}

impl Row {
    pub(crate) fn judge(&mut self) {
        let mut missed = Vec::new();
        if !self.http.all_ok() {
            missed.push("HTTP calls");
        }
        if !self.grpc.all_ok() {
            missed.push("gRPC calls");
        }
        if !self.probe.all_ok() || self.probe.max_ms >= PROBE_TARGET.as_secs_f64() * 1e3 {
            missed.push("probes");
        }
        if self.peak_rss_bytes.is_some_and(|b| b >= RSS_TARGET) {
            missed.push("RSS");
        }
        if self.lost.as_ref().is_some_and(|l| l.count > 0) {
            missed.push("lost");
        }
        self.missed = missed.into_iter().map(String::from).collect();
    }

    pub(crate) fn markdown(&self) -> String {
        let rss = match self.peak_rss_bytes {
            Some(b) => format!(
                "{:.0} MiB{}",
                b as f64 / (1 << 20) as f64,
                if self.peak_since_start { "*" } else { "" }
            ),
            None => "-".into(),
        };
        let lost = match &self.lost {
            Some(l) => l.detail.clone(),
            None => "-".into(),
        };
        let result = if self.missed.is_empty() {
            "PASS".to_string()
        } else {
            format!("FAIL: {}", self.missed.join(", "))
        };
        format!(
            "| {} | {} | {} | {} | {} | {} / {} | {} / {} | {} | {} | {} |",
            self.attack,
            self.http.rate(),
            ms(self.http.p99_ms),
            self.grpc.rate(),
            ms(self.grpc.p99_ms),
            ms(self.probe.max_ms),
            ms(self.probe.p99_ms),
            self.health.rate(),
            ms(self.health.max_ms),
            rss,
            lost,
            result
        )
    }

    pub(crate) fn note(&self) -> String {
        let mut parts = Vec::new();
        let failed = |name: &str, s: &Stat| {
            (s.ok < s.total).then(|| format!("{name} failures: {}", s.errors()))
        };
        parts.extend(failed("HTTP", &self.http));
        parts.extend(failed("gRPC", &self.grpc));
        parts.extend(failed("probe", &self.probe));
        parts.extend(failed("gRPC health", &self.health));
        if let Some(h) = &self.http_healthz {
            parts.push(format!(
                "/healthz on the HTTP port: {}, max {}{}",
                h.rate(),
                ms(h.max_ms),
                if h.ok < h.total {
                    format!(" ({})", h.errors())
                } else {
                    String::new()
                }
            ));
        }
        parts.extend(self.notes.iter().cloned());
        format!("- **{}**: {}.", self.attack, parts.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// Attacker connections and what became of them.

#[derive(Debug, Clone, Copy)]
pub(crate) enum Fate {
    ConnectFailed,
    /// Still open when the attack stopped.
    Open,
    /// Closed (or reset) by the server, this long into the attack, without an answer.
    Closed(f64),
    /// Answered with this status before the request was complete.
    Answered(u16, f64),
    /// The whole request went out and this was the answer (0: none).
    Completed(u16),
}

#[derive(Debug, Default)]
pub(crate) struct Census {
    pub(crate) connect_failed: usize,
    pub(crate) open: usize,
    pub(crate) closed: usize,
    pub(crate) answered: BTreeMap<u16, usize>,
    pub(crate) completed: BTreeMap<u16, usize>,
    pub(crate) first_cut_s: Option<f64>,
    pub(crate) last_cut_s: Option<f64>,
    pub(crate) reconnects: usize,
}

impl Census {
    pub(crate) fn add(&mut self, fates: &[Fate]) {
        self.reconnects += fates.len().saturating_sub(1);
        for fate in fates {
            let cut_at = match *fate {
                Fate::ConnectFailed => {
                    self.connect_failed += 1;
                    None
                }
                Fate::Open => {
                    self.open += 1;
                    None
                }
                Fate::Closed(at) => {
                    self.closed += 1;
                    Some(at)
                }
                Fate::Answered(status, at) => {
                    *self.answered.entry(status).or_default() += 1;
                    Some(at)
                }
                Fate::Completed(status) => {
                    *self.completed.entry(status).or_default() += 1;
                    None
                }
            };
            if let Some(at) = cut_at {
                self.first_cut_s = Some(self.first_cut_s.map_or(at, |f| f.min(at)));
                self.last_cut_s = Some(self.last_cut_s.map_or(at, |l| l.max(at)));
            }
        }
    }

    pub(crate) fn describe(&self, what: &str) -> String {
        let counts = |m: &BTreeMap<u16, usize>| {
            m.iter()
                .map(|(s, n)| {
                    if *s == 0 {
                        format!("no answer x{n}")
                    } else {
                        format!("{s} x{n}")
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = vec![format!("{} open at the end", self.open)];
        if self.closed > 0 {
            parts.push(format!("{} closed by the server", self.closed));
        }
        if !self.answered.is_empty() {
            parts.push(format!("answered early: {}", counts(&self.answered)));
        }
        if !self.completed.is_empty() {
            parts.push(format!("completed: {}", counts(&self.completed)));
        }
        if let (Some(first), Some(last)) = (self.first_cut_s, self.last_cut_s) {
            parts.push(format!("cut between {first:.1} s and {last:.1} s"));
        }
        if self.connect_failed > 0 {
            parts.push(format!("{} connects failed", self.connect_failed));
        }
        if self.reconnects > 0 {
            parts.push(format!("{} reconnects", self.reconnects));
        }
        format!("{what}: {}", parts.join(", "))
    }
}

/// What became of a connection: the server answered or closed it, or `stop` came first.
pub(crate) async fn outcome(
    stream: &mut TcpStream,
    stop: &mut watch::Receiver<bool>,
    started: Instant,
) -> Fate {
    let read = async {
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf).await;
        buf
    };
    tokio::select! {
        buf = read => {
            let at = started.elapsed().as_secs_f64();
            match parse_response(&buf) {
                Some((status, _)) => Fate::Answered(status, at),
                None => Fate::Closed(at),
            }
        }
        () = until_stopped(stop) => Fate::Open,
    }
}

/// The attack's connections run until `stop`; a bounded number connect at once.
pub(crate) struct Attackers {
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) tasks: JoinSet<Vec<Fate>>,
    pub(crate) started: Instant,
    pub(crate) gate: Arc<Semaphore>,
}

impl Attackers {
    pub(crate) fn new() -> Attackers {
        Attackers {
            stop: watch::channel(false).0,
            tasks: JoinSet::new(),
            started: Instant::now(),
            gate: Arc::new(Semaphore::new(128)),
        }
    }

    pub(crate) async fn connect(
        gate: &Semaphore,
        addr: SocketAddr,
        from: Option<IpAddr>,
    ) -> Result<TcpStream, String> {
        let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
        connect(addr, from, Duration::from_secs(5)).await
    }

    /// `count` connections to `addr` that send `first` (maybe nothing), then wait; with
    /// `reconnect`, one closed by the server is opened again a second later.
    pub(crate) fn hold(
        &mut self,
        count: usize,
        addr: SocketAddr,
        from: Option<IpAddr>,
        first: Arc<Vec<u8>>,
        reconnect: bool,
    ) {
        for _ in 0..count {
            let (mut stop, started) = (self.stop.subscribe(), self.started);
            let (gate, first) = (Arc::clone(&self.gate), Arc::clone(&first));
            self.tasks.spawn(async move {
                let mut fates = Vec::new();
                while !stopped(&stop) {
                    let fate = match Attackers::connect(&gate, addr, from).await {
                        Ok(mut stream) => {
                            if stream.write_all(&first).await.is_ok() {
                                outcome(&mut stream, &mut stop, started).await
                            } else {
                                Fate::Closed(started.elapsed().as_secs_f64())
                            }
                        }
                        Err(_) => Fate::ConnectFailed,
                    };
                    fates.push(fate);
                    if matches!(fate, Fate::Open) || !reconnect || fates.len() >= 1000 {
                        break;
                    }
                    pause(&mut stop, Duration::from_secs(1)).await;
                }
                fates
            });
        }
    }

    /// `count` connections that send `now`, then `slow` one byte per `interval`, then read the
    /// answer.
    pub(crate) fn trickle(
        &mut self,
        count: usize,
        addr: SocketAddr,
        from: Option<IpAddr>,
        now: Arc<Vec<u8>>,
        slow: Arc<Vec<u8>>,
        interval: Duration,
    ) {
        for _ in 0..count {
            let (mut stop, started) = (self.stop.subscribe(), self.started);
            let (gate, now, slow) = (Arc::clone(&self.gate), Arc::clone(&now), Arc::clone(&slow));
            self.tasks.spawn(async move {
                let Ok(mut stream) = Attackers::connect(&gate, addr, from).await else {
                    return vec![Fate::ConnectFailed];
                };
                let (mut rd, mut wr) = stream.split();
                let reader = async {
                    let mut buf = Vec::new();
                    let _ = rd.read_to_end(&mut buf).await;
                    buf
                };
                tokio::pin!(reader);
                let writer = async {
                    wr.write_all(&now).await?;
                    for b in slow.iter() {
                        tokio::time::sleep(interval).await;
                        wr.write_all(&[*b]).await?;
                    }
                    Ok::<_, std::io::Error>(())
                };
                let cut = |buf: Vec<u8>| {
                    let at = started.elapsed().as_secs_f64();
                    match parse_response(&buf) {
                        Some((status, _)) => Fate::Answered(status, at),
                        None => Fate::Closed(at),
                    }
                };
                let fate = tokio::select! {
                    buf = &mut reader => cut(buf),
                    wrote = writer => match wrote {
                        Ok(()) => match tokio::time::timeout(Duration::from_secs(10), &mut reader).await {
                            Ok(buf) => Fate::Completed(parse_response(&buf).map_or(0, |r| r.0)),
                            Err(_) => Fate::Completed(0),
                        },
                        Err(_) => Fate::Closed(started.elapsed().as_secs_f64()),
                    },
                    () = until_stopped(&mut stop) => Fate::Open,
                };
                vec![fate]
            });
        }
    }

    pub(crate) async fn finish(mut self) -> Census {
        let _ = self.stop.send(true);
        let mut census = Census::default();
        while let Some(fates) = self.tasks.join_next().await {
            if let Ok(fates) = fates {
                census.add(&fates);
            }
        }
        census
    }
}
