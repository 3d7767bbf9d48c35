//! The attacks themselves.

use super::*;

// ---------------------------------------------------------------------------------------------
// The attacks.
pub(crate) struct Siege {
    pub(crate) args: Arc<Args>,
    /// None when the attacker address could not be bound: attacker and callers share 127.0.0.1.
    pub(crate) attacker: Option<IpAddr>,
}

impl Siege {
    /// 1. N bodies declaring 32 MiB, 11 bytes sent, then silence.
    pub(crate) async fn silent(&self, n: usize) -> Row {
        let args = &self.args;
        let mut attackers = Attackers::new();
        let mut first = head(
            "POST",
            "/v1/embeddings",
            args.http_addr,
            Some(args.declared_bytes),
        );
        first.extend_from_slice(br#"{"input":[""#);
        attackers.hold(n, args.http_addr, self.attacker, Arc::new(first), false);
        // The uploads are in before anyone is measured.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let watch = Watch::start(args);
        tokio::time::sleep(args.duration).await;
        let mut row = watch.finish(args, format!("silent uploads x{n}")).await;
        let census = attackers.finish().await;
        row.notes.push(census.describe("attacker uploads"));
        row
    }

    /// 2 and 6. Idle connections to both ports; `kubelet`: kept open (reconnecting).
    pub(crate) async fn idle(&self, kubelet: bool) -> Row {
        let args = &self.args;
        let mut http = Attackers::new();
        let mut grpc = Attackers::new();
        let nothing = Arc::new(Vec::new());
        http.hold(
            args.idle_sockets,
            args.http_addr,
            self.attacker,
            Arc::clone(&nothing),
            kubelet,
        );
        grpc.hold(
            args.idle_sockets,
            args.grpc_addr,
            self.attacker,
            nothing,
            kubelet,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let watch = Watch::start(args);
        let (duration, name) = if kubelet {
            (
                args.kubelet_duration,
                format!(
                    "kubelet: {} idle sockets per port held + probes",
                    args.idle_sockets
                ),
            )
        } else {
            (
                args.duration,
                format!("idle sockets x{} per port", args.idle_sockets),
            )
        };
        tokio::time::sleep(duration).await;
        let mut row = watch.finish(args, name).await;
        row.notes
            .push(http.finish().await.describe("HTTP idle sockets"));
        row.notes
            .push(grpc.finish().await.describe("gRPC idle sockets"));
        row
    }

    /// 5. Requests sent 1 byte per --trickle-interval: half trickle the body, half the headers.
    pub(crate) async fn trickle(&self) -> Row {
        let args = &self.args;
        let bytes_needed = (args.trickle_duration.as_secs_f64()
            / args.trickle_interval.as_secs_f64())
        .ceil() as usize
            + 8;
        // A valid body padded with spaces, so that it lasts past the attack.
        let mut body = br#"{"input":["a slow text"]}"#.to_vec();
        body.resize(body.len().max(bytes_needed), b' ');
        let body_head = head(
            "POST",
            "/v1/embeddings",
            args.http_addr,
            Some(body.len() as u64),
        );
        let mut attackers = Attackers::new();
        let half = args.trickle_connections / 2;
        attackers.trickle(
            args.trickle_connections - half,
            args.http_addr,
            self.attacker,
            Arc::new(body_head.clone()),
            Arc::new(body.clone()),
            args.trickle_interval,
        );
        // Slowloris: the request line at once, the headers (and the body) trickled.
        let line_end = body_head
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(0, |p| p + 2);
        let mut rest = body_head[line_end..].to_vec();
        rest.extend_from_slice(&body);
        attackers.trickle(
            half,
            args.http_addr,
            self.attacker,
            Arc::new(body_head[..line_end].to_vec()),
            Arc::new(rest),
            args.trickle_interval,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let watch = Watch::start(args);
        tokio::time::sleep(args.trickle_duration).await;
        let mut row = watch
            .finish(
                args,
                format!(
                    "slow trickle x{} (1 B per {})",
                    args.trickle_connections,
                    ms(args.trickle_interval.as_secs_f64() * 1e3)
                ),
            )
            .await;
        row.notes.push(
            attackers
                .finish()
                .await
                .describe("trickling connections (half body, half headers)"),
        );
        row
    }

    /// 4. The worst JSON shapes at --amp-bytes, sent again and again for --duration.
    pub(crate) async fn amplify(&self) -> anyhow::Result<Row> {
        let args = &self.args;
        let collection = "siege-amp";
        let dimension = self.create(collection).await?;
        let cap = args.amp_bytes;
        let fill = |prefix: &str, unit: &dyn Fn(usize) -> String, last: &str, suffix: &str| {
            let mut body = prefix.as_bytes().to_vec();
            let room = cap.saturating_sub(suffix.len() + last.len());
            let mut i = 0;
            loop {
                let u = unit(i);
                if body.len() + u.len() > room {
                    break;
                }
                body.extend_from_slice(u.as_bytes());
                i += 1;
            }
            body.extend_from_slice(last.as_bytes());
            body.extend_from_slice(suffix.as_bytes());
            (body, i + 1)
        };
        let vector = vec!["0.1"; dimension].join(",");
        let shapes = vec![
            (
                "tiny items",
                "/v1/embeddings",
                fill(r#"{"input":["#, &|_| r#""a","#.into(), r#""a""#, "]}"),
            ),
            (
                "one item, a huge nested array",
                "/v1/embeddings",
                fill(r#"{"input":[["#, &|_| "[0],".into(), "[0]", "]]}"),
            ),
            (
                "a labels string of commas",
                "/v1/classify",
                fill(
                    &format!(r#"{{"input":[{{"image":"{PNG_1X1}"}}],"labels":""#),
                    &|_| "a,".into(),
                    "a",
                    r#""}"#,
                ),
            ),
            (
                "metadata with millions of keys",
                "/v1/collections/siege-amp/items",
                fill(
                    &format!(r#"{{"items":[{{"id":"m","vector":[{vector}],"metadata":{{"#),
                    &|i| format!(r#""{i:x}":"","#),
                    r#""end":"""#,
                    "}}]}",
                ),
            ),
        ];
        let watch = Watch::start(args);
        let deadline = Instant::now() + args.duration;
        let mut senders = JoinSet::new();
        let mut notes = Vec::new();
        for (s, (name, path, (body, units))) in shapes.into_iter().enumerate() {
            notes.push(format!("{name}: {units} elements in {} bytes", body.len()));
            let body = Arc::new(body);
            for _ in 0..args.amp_concurrency {
                let (args, body, from) = (Arc::clone(args), Arc::clone(&body), self.attacker);
                senders.spawn(async move {
                    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
                    while Instant::now() < deadline {
                        // A send started before the deadline is heard out (the server may take
                        // long to parse): the callers and probes are measured until then.
                        let limit = Duration::from_secs(60);
                        let answer =
                            match http_call(args.http_addr, from, "POST", path, Some(&body), limit)
                                .await
                            {
                                Ok((status, _)) => status.to_string(),
                                Err(e) => e,
                            };
                        *answers.entry(answer).or_default() += 1;
                    }
                    (s, answers)
                });
            }
        }
        let mut answers: Vec<BTreeMap<String, usize>> = vec![BTreeMap::new(); notes.len()];
        while let Some(Ok((s, a))) = senders.join_next().await {
            for (k, n) in a {
                *answers[s].entry(k).or_default() += n;
            }
        }
        let mut row = watch
            .finish(
                args,
                format!(
                    "JSON amplification: 4 shapes x{} at {} MiB",
                    args.amp_concurrency,
                    cap >> 20
                ),
            )
            .await;
        for (note, answers) in notes.iter().zip(&answers) {
            let answers: Vec<String> = answers.iter().map(|(k, n)| format!("{k} x{n}")).collect();
            row.notes
                .push(format!("{note}, answered {}", answers.join(", ")));
        }
        self.drop_collection(collection).await;
        Ok(row)
    }

    /// 3. Hang-ups right after a write is sent; then the store is checked for splits.
    pub(crate) async fn hangup(&self) -> anyhow::Result<Row> {
        let args = &self.args;
        let watch = Watch::start(args);
        let mut deleted_searchable = 0u64;
        let mut delete_splits = 0usize;
        let mut deletes_done = 0usize;
        let mut zombies = 0u64;
        let mut zombie_detail = BTreeMap::<String, usize>::new();
        let mut drops_done = 0usize;
        let mut unsearchable = 0u64;
        let mut ghosts = 0u64;
        let mut upsert_splits = 0usize;
        let mut upserts_done = 0usize;
        let mut trials = 0usize;
        for round in 0..args.hangup_rounds {
            for (d, delay) in args.hangup_delays.iter().enumerate() {
                trials += 1;
                let ids: Vec<String> = (0..args.hangup_items)
                    .map(|i| format!("item-{i}"))
                    .collect();
                // A delete of every item, hung up on.
                let name = format!("siege-del-{round}-{d}");
                let dimension = self.create(&name).await?;
                self.upsert(&name, &ids, dimension, round * 100 + d).await?;
                let body = serde_json::to_vec(&json!({ "ids": ids }))?;
                self.hang_up(
                    "POST",
                    &format!("/v1/collections/{name}/items/delete"),
                    Some(&body),
                    *delay,
                )
                .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (_, missing) = self.get_items(&name, &ids).await?;
                let hits = self.search(&name, dimension).await?;
                let split = missing.iter().filter(|id| hits.contains(*id)).count() as u64;
                deletes_done += usize::from(!missing.is_empty());
                deleted_searchable += split;
                delete_splits += usize::from(split > 0);
                self.drop_collection(&name).await;

                // A collection delete, hung up on.
                let name = format!("siege-drop-{round}-{d}");
                let dimension = self.create(&name).await?;
                self.upsert(&name, &ids, dimension, round * 100 + d).await?;
                self.hang_up("DELETE", &format!("/v1/collections/{name}"), None, *delay)
                    .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let path = format!("/v1/collections/{name}");
                let get = self.status("GET", &path, None).await;
                let delete = self.status("DELETE", &path, None).await;
                let create = self
                    .status("POST", "/v1/collections", Some(json!({ "name": name })))
                    .await;
                drops_done += usize::from(get == 404);
                // Consistent: (200, 200, 201) not deleted, (404, 404, 201) deleted.
                if !matches!((get, delete, create), (200, 200, 201) | (404, 404, 201)) {
                    zombies += 1;
                    *zombie_detail
                        .entry(format!("GET {get}, DELETE {delete}, re-create {create}"))
                        .or_default() += 1;
                }
                self.drop_collection(&name).await;

                // An upsert, hung up on.
                let name = format!("siege-up-{round}-{d}");
                let dimension = self.create(&name).await?;
                let body = serde_json::to_vec(&upsert_body(&ids, dimension, round * 100 + d))?;
                self.hang_up(
                    "POST",
                    &format!("/v1/collections/{name}/items"),
                    Some(&body),
                    *delay,
                )
                .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (present, _) = self.get_items(&name, &ids).await?;
                let hits = self.search(&name, dimension).await?;
                let lost = present.iter().filter(|id| !hits.contains(*id)).count() as u64;
                ghosts += hits.iter().filter(|id| !present.contains(*id)).count() as u64;
                upserts_done += usize::from(!present.is_empty());
                unsearchable += lost;
                upsert_splits += usize::from(lost > 0);
                self.drop_collection(&name).await;
            }
        }
        let mut row = watch
            .finish(
                args,
                format!(
                    "hang-up during writes ({} items; closed {} ms after sending)",
                    args.hangup_items,
                    args.hangup_delays
                        .iter()
                        .map(|d| format!("{}", d.as_secs_f64() * 1e3))
                        .collect::<Vec<_>>()
                        .join("/"),
                ),
            )
            .await;
        row.lost = Some(Lost {
            count: deleted_searchable + zombies + unsearchable + ghosts,
            detail: format!(
                "{deleted_searchable} deleted searchable, {zombies} zombies, {unsearchable} upserted unsearchable"
            ),
        });
        row.notes.push(format!(
            "{trials} trials of each write ({} rounds x {} delays); deletes that took effect: {deletes_done}, \
             of them split (items/get missing, search finds them): {delete_splits}; collection deletes \
             that took effect: {drops_done}, zombies: {zombies}{}; upserts that took effect: \
             {upserts_done}, of them split (on disk, not found by search): {upsert_splits}; items \
             searchable but not on disk: {ghosts}",
            args.hangup_rounds,
            args.hangup_delays.len(),
            if zombie_detail.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    zombie_detail
                        .iter()
                        .map(|(k, n)| format!("{k}: x{n}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
        ));
        Ok(row)
    }

    /// Sends a whole request from the attacker's address, waits `delay` and closes the socket.
    pub(crate) async fn hang_up(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        delay: Duration,
    ) {
        let args = &self.args;
        let Ok(mut stream) = connect(args.http_addr, self.attacker, args.call_timeout).await else {
            return;
        };
        let mut request = head(method, path, args.http_addr, body.map(|b| b.len() as u64));
        request.extend_from_slice(body.unwrap_or_default());
        if stream.write_all(&request).await.is_err() {
            return;
        }
        // Sub-millisecond: a spin, not the timer wheel (1 ms granularity).
        let sent = Instant::now();
        while sent.elapsed() < delay {
            std::hint::spin_loop();
        }
        drop(stream);
    }

    /// An API call as an honest client; the status and the JSON reply (Null if none).
    pub(crate) async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let body = body.map(|b| serde_json::to_vec(&b)).transpose()?;
        let (status, reply) = http_call(
            self.args.http_addr,
            None,
            method,
            path,
            body.as_deref(),
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{method} {path}: {e}"))?;
        Ok((
            status,
            serde_json::from_slice(&reply).unwrap_or(Value::Null),
        ))
    }

    pub(crate) async fn status(&self, method: &str, path: &str, body: Option<Value>) -> u16 {
        self.api(method, path, body).await.map_or(0, |(s, _)| s)
    }

    /// Creates collection `name` (dropping an old one first); its dimension.
    pub(crate) async fn create(&self, name: &str) -> anyhow::Result<usize> {
        self.drop_collection(name).await;
        let (status, reply) = self
            .api("POST", "/v1/collections", Some(json!({ "name": name })))
            .await?;
        anyhow::ensure!(status == 201, "creating {name}: HTTP {status} {reply}");
        reply["dimension"]
            .as_u64()
            .map(|d| d as usize)
            .with_context(|| format!("creating {name}: no dimension in {reply}"))
    }

    pub(crate) async fn drop_collection(&self, name: &str) {
        let _ = self
            .status("DELETE", &format!("/v1/collections/{name}"), None)
            .await;
    }

    pub(crate) async fn upsert(
        &self,
        name: &str,
        ids: &[String],
        dimension: usize,
        seed: usize,
    ) -> anyhow::Result<()> {
        let (status, reply) = self
            .api(
                "POST",
                &format!("/v1/collections/{name}/items"),
                Some(upsert_body(ids, dimension, seed)),
            )
            .await?;
        anyhow::ensure!(
            status == 200,
            "upserting into {name}: HTTP {status} {reply}"
        );
        Ok(())
    }

    /// The ids items/get finds, and those it says are missing.
    pub(crate) async fn get_items(
        &self,
        name: &str,
        ids: &[String],
    ) -> anyhow::Result<(HashSet<String>, HashSet<String>)> {
        let (status, reply) = self
            .api(
                "POST",
                &format!("/v1/collections/{name}/items/get"),
                Some(json!({ "ids": ids })),
            )
            .await?;
        anyhow::ensure!(status == 200, "items/get on {name}: HTTP {status} {reply}");
        let strings = |v: &Value| -> HashSet<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        };
        let present = reply["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["id"].as_str().map(String::from))
            .collect();
        Ok((present, strings(&reply["missing"])))
    }

    /// The ids a search with top_k = --hangup-items finds (every item of a collection that size).
    pub(crate) async fn search(
        &self,
        name: &str,
        dimension: usize,
    ) -> anyhow::Result<HashSet<String>> {
        let (status, reply) = self
            .api(
                "POST",
                &format!("/v1/collections/{name}/search"),
                Some(json!({
                    "query": { "vector": vec![1.0f32; dimension] },
                    "top_k": self.args.hangup_items,
                })),
            )
            .await?;
        anyhow::ensure!(status == 200, "search on {name}: HTTP {status} {reply}");
        Ok(reply["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h["id"].as_str().map(String::from))
            .collect())
    }
}

/// Items with pseudo-random vectors (xorshift from `seed`) and a little metadata.
pub(crate) fn upsert_body(ids: &[String], dimension: usize, seed: usize) -> Value {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed as u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let items: Vec<Value> = ids
        .iter()
        .map(|id| {
            let vector: Vec<f32> = (0..dimension).map(|_| next()).collect();
            json!({ "id": id, "vector": vector, "metadata": { "source": "siege" } })
        })
        .collect();
    json!({ "items": items })
}
