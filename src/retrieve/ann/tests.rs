use super::{persist::Opened, *};
use crate::retrieve::index::FlatIndex;

/// The defaults with searches on the HNSW graph (the graph's own tests).
fn graph_params() -> AnnParams {
    AnnParams {
        graph: true,
        ..AnnParams::default()
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    /// Roughly gaussian (a sum of uniforms), unit variance.
    fn gauss(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() * 0.866
    }
}

fn normalize(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= n);
    v
}

/// `n` vectors around 100 random centres (the same for every seed: queries fall among the items),
/// like embeddings of related content.
fn clustered(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut crng = Rng(0x5EED);
    let centres: Vec<Vec<f32>> = (0..100)
        .map(|_| normalize((0..dim).map(|_| crng.gauss()).collect()))
        .collect();
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (0..n)
        .map(|i| {
            let c = &centres[(i + seed as usize) % centres.len()];
            normalize(c.iter().map(|x| x + 0.12 * rng.gauss()).collect())
        })
        .collect()
}

fn meta(i: usize) -> Arc<Metadata> {
    Arc::new(Metadata::from([
        ("mod10".to_string(), (i % 10).to_string()),
        ("mod1000".to_string(), (i % 1000).to_string()),
        ("all".to_string(), "yes".to_string()),
    ]))
}

fn items(vectors: &[Vec<f32>]) -> Vec<(String, Vec<f32>, Arc<Metadata>)> {
    vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("id{i}"), v.clone(), meta(i)))
        .collect()
}

fn flat_of(items: &[(String, Vec<f32>, Arc<Metadata>)]) -> FlatIndex {
    let mut flat = FlatIndex::new(items[0].1.len(), 1);
    for (id, v, m) in items {
        flat.upsert(id.clone(), v, Arc::clone(m));
    }
    flat
}

fn ids(s: &[Scored]) -> Vec<String> {
    s.iter().map(|s| s.id.clone()).collect()
}

fn filter(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Mean recall@k of `ann` against `flat` over `queries`.
fn recall(ann: &AnnIndex, flat: &FlatIndex, queries: &[Vec<f32>], k: usize, f: &Metadata) -> f64 {
    let mut hit = 0;
    for q in queries {
        let truth = ids(&flat.search(q, k, f));
        let got = ids(&ann.search(q, k, f));
        hit += got.iter().filter(|id| truth.contains(id)).count();
    }
    hit as f64 / (queries.len() * k) as f64
}

#[test]
fn recall_at_10_on_clustered_data_and_scores_are_exact() {
    let dim = 64;
    let data = items(&clustered(20_000, dim, 1));
    let flat = flat_of(&data);
    let ann = AnnIndex::build(dim, 2, graph_params(), &data).unwrap();
    assert_eq!(ann.len(), 20_000);
    let queries = clustered(50, dim, 99);
    let r = recall(&ann, &flat, &queries, 10, &Metadata::new());
    assert!(r >= 0.9, "recall@10 {r}");
    // Every returned score is the exact f32 dot product: the one the exact index gives.
    for q in &queries[..10] {
        let (got, plan) = ann.search_planned(q, 10, &Metadata::new());
        assert_eq!(plan, Plan::Graph);
        assert_eq!(got.len(), 10);
        let exact = flat.search(q, 20_000, &Metadata::new());
        for s in &got {
            let e = exact.iter().find(|e| e.id == s.id).unwrap();
            assert_eq!(s.score.to_bits(), e.score.to_bits(), "{}", s.id);
        }
        assert!(got.windows(2).all(|w| w[0].score >= w[1].score));
    }
}

#[test]
fn filters_never_come_up_short_and_the_planner_picks_the_path() {
    let dim = 32;
    let data = items(&clustered(10_000, dim, 2));
    let flat = flat_of(&data);
    let mut ann = AnnIndex::build(dim, 2, graph_params(), &data).unwrap();
    let q = clustered(1, dim, 7).remove(0);

    // Selective (10 rows): exact, and exactly right.
    let f = filter(&[("mod1000", "7")]);
    let (got, plan) = ann.search_planned(&q, 10, &f);
    assert_eq!(plan, Plan::ExactMatches);
    assert_eq!(ids(&got), ids(&flat.search(&q, 10, &f)));
    // Fewer match than asked: all of them.
    let (got, _) = ann.search_planned(&q, 50, &f);
    assert_eq!(got.len(), 10);
    // Two pairs: the intersection.
    let f2 = filter(&[("mod10", "3"), ("mod1000", "13")]);
    assert_eq!(ids(&ann.search(&q, 5, &f2)), ids(&flat.search(&q, 5, &f2)));
    // A value no item has, and a key none has.
    assert_eq!(
        ann.search_planned(&q, 5, &filter(&[("mod10", "x")])).1,
        Plan::Empty
    );
    assert!(ann.search(&q, 5, &filter(&[("nope", "1")])).is_empty());

    // The bound's tenth-of-the-collection term (the 20,000-row floor set aside): 10% of 10k is
    // scanned exactly, everything goes to the graph.
    ann.set_exact_max_rows(1);
    assert_eq!(
        ann.search_planned(&q, 10, &filter(&[("mod10", "4")])).1,
        Plan::ExactMatches
    );
    assert_eq!(
        ann.search_planned(&q, 10, &filter(&[("all", "yes")])).1,
        Plan::FilteredGraph
    );
    // 10% through the graph (forced) and unselective: k results, almost all right.
    ann.set_exact_max_rows(0);
    for f in [filter(&[("mod10", "4")]), filter(&[("all", "yes")])] {
        let (got, plan) = ann.search_planned(&q, 10, &f);
        assert_eq!(plan, Plan::FilteredGraph, "{f:?}");
        assert_eq!(got.len(), 10);
        assert!(
            got.iter()
                .all(|s| f.iter().all(|(k, v)| s.metadata.get(k) == Some(v)))
        );
        let truth = ids(&flat.search(&q, 10, &f));
        let hits = got.iter().filter(|s| truth.contains(&s.id)).count();
        assert!(hits >= 8, "{hits} of 10 for {f:?}");
    }
    // The graph forced, 10 matches: it comes up short, the exact scan gives all of them.
    let f = filter(&[("mod10", "5"), ("mod1000", "5")]);
    assert_eq!(ann.search(&q, 120, &f).len(), 10);
    let wide = filter(&[("mod10", "6")]);
    let many = ann.search(&q, 900, &wide);
    assert_eq!(
        many.len(),
        900,
        "a filter never returns fewer than k when enough match"
    );
}

#[test]
fn a_filtered_walk_past_its_visit_budget_falls_back_to_the_exact_scan() {
    let dim = 32;
    let data = items(&clustered(10_000, dim, 2));
    let flat = flat_of(&data);
    let mut ann = AnnIndex::build(dim, 2, graph_params(), &data).unwrap();
    // The graph forced for every filter, and a walk budget of 32 x 64 visits.
    ann.set_exact_max_rows(0);
    ann.set_expansion_search(64);
    // The query sits in cluster 7; the filter's 10 matches all lie in cluster 52, far away. Fewer
    // matches than the walk wants (ef 64): unbounded, it would walk the whole graph.
    let q = clustered(1, dim, 7).remove(0);
    let f = filter(&[("mod1000", "50")]);
    let (got, plan) = ann.search_planned(&q, 10, &f);
    assert_eq!(
        plan,
        Plan::ExactMatches,
        "the walk went past its budget: scanned exactly"
    );
    assert_eq!(ids(&got), ids(&flat.search(&q, 10, &f)));
    // A filter whose matches are plentiful stays on the graph.
    let (got, plan) = ann.search_planned(&q, 10, &filter(&[("all", "yes")]));
    assert_eq!(plan, Plan::FilteredGraph);
    assert_eq!(got.len(), 10);
}

#[test]
fn deletes_and_replacements_are_reflected() {
    let dim = 32;
    let vectors = clustered(6_000, dim, 3);
    let mut ann = AnnIndex::build(dim, 2, graph_params(), &items(&vectors)).unwrap();
    let q = vectors[17].clone();
    let top = ann.search(&q, 1, &Metadata::new());
    assert_eq!(top[0].id, "id17");
    assert!(ann.delete("id17"));
    assert!(!ann.delete("id17"));
    assert_eq!(ann.len(), 5_999);
    assert!(
        ann.search(&q, 50, &Metadata::new())
            .iter()
            .all(|s| s.id != "id17")
    );
    // Replace another item by the query itself: it comes first, score 1.
    ann.upsert("id900".into(), &q, meta(900));
    assert_eq!(ann.len(), 5_999);
    let top = ann.search(&q, 3, &Metadata::new());
    assert_eq!(top[0].id, "id900");
    assert!((top[0].score - 1.0).abs() < 1e-5);
    // Metadata-only replacement: filters see the new pairs, not the old.
    let m = Arc::new(filter(&[("colour", "red")]));
    ann.upsert("id900".into(), &q, m);
    assert_eq!(
        ids(&ann.search(&q, 3, &filter(&[("colour", "red")]))),
        ["id900"]
    );
    assert!(
        ann.search(&q, 3, &filter(&[("mod10", "0")]))
            .iter()
            .all(|s| s.id != "id900")
    );
    // A new item reuses the freed slot and is found.
    let fresh = clustered(1, dim, 55).remove(0);
    ann.upsert("new".into(), &fresh, meta(1));
    assert_eq!(ann.len(), 6_000);
    assert_eq!(ann.search(&fresh, 1, &Metadata::new())[0].id, "new");
    assert_eq!(ann.items().count(), 6_000);
}

#[test]
fn saved_graphs_load_repair_or_rebuild_never_stale() {
    let dim = 16;
    let dir = tempfile::tempdir().unwrap();
    let vectors = clustered(5_000, dim, 4);
    let data = items(&vectors);
    let p = graph_params();
    let (ann, opened) = AnnIndex::open(dim, 2, p, &data, dir.path(), "c/1", "inc").unwrap();
    assert_eq!(opened, Opened::Rebuilt("no saved graph".into()));
    ann.save(dir.path(), "c/1", "inc").unwrap();
    assert!(!ann.is_dirty());
    let q = vectors[42].clone();
    let before = ann.search(&q, 10, &Metadata::new());

    // Same store: loaded as saved, same answers.
    let (again, opened) = AnnIndex::open(dim, 2, p, &data, dir.path(), "c/1", "inc").unwrap();
    assert_eq!(opened, Opened::Loaded);
    assert_eq!(again.search(&q, 10, &Metadata::new()), before);

    // The store changed a little: id42 moved, id43 gone, one new: repaired, and right.
    let mut changed = data.clone();
    let moved = clustered(1, dim, 77).remove(0);
    changed[42].1 = moved.clone();
    changed.remove(43);
    changed.push(("new".into(), q.clone(), meta(0)));
    let (repaired, opened) = AnnIndex::open(dim, 2, p, &changed, dir.path(), "c/1", "inc").unwrap();
    assert_eq!(
        opened,
        Opened::Repaired {
            added: 2,
            removed: 1
        }
    );
    assert_eq!(repaired.len(), 5_000);
    let top = repaired.search(&q, 10, &Metadata::new());
    assert_eq!(top[0].id, "new");
    assert!(top.iter().all(|s| s.id != "id43" && s.id != "id42"));
    assert_eq!(repaired.search(&moved, 1, &Metadata::new())[0].id, "id42");
    let flat = flat_of(&changed);
    assert!(
        recall(
            &repaired,
            &flat,
            &clustered(20, dim, 8),
            10,
            &Metadata::new()
        ) >= 0.9
    );

    // Much changed, another incarnation, a corrupt sidecar, a truncated graph: rebuilt.
    let shuffled: Vec<_> = data
        .iter()
        .map(|(id, _, m)| {
            (
                id.clone(),
                clustered(1, dim, id.len() as u64 + 5).remove(0),
                Arc::clone(m),
            )
        })
        .collect();
    let rebuilt = |items: &[(String, Vec<f32>, Arc<Metadata>)], inc: &str| {
        AnnIndex::open(dim, 2, p, items, dir.path(), "c/1", inc).unwrap()
    };
    assert!(matches!(rebuilt(&shuffled, "inc").1, Opened::Rebuilt(w) if w.contains("differ")));
    assert!(matches!(rebuilt(&data, "other").1, Opened::Rebuilt(w) if w.contains("another")));
    let (graph, sidecar) = persist::paths(dir.path(), "c/1");
    let mut bytes = std::fs::read(&sidecar).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&sidecar, &bytes).unwrap();
    assert!(matches!(rebuilt(&data, "inc").1, Opened::Rebuilt(w) if w.contains("checksum")));
    ann.save(dir.path(), "c/1", "inc").unwrap();
    let g = std::fs::read(&graph).unwrap();
    std::fs::write(&graph, &g[..g.len() - 100]).unwrap();
    let (fixed, opened) = rebuilt(&data, "inc");
    assert!(matches!(opened, Opened::Rebuilt(w) if w.contains("length")));
    assert_eq!(fixed.search(&q, 1, &Metadata::new())[0].id, "id42");

    persist::remove_files(dir.path(), "c/1");
    assert!(!graph.exists() && !sidecar.exists());
}

/// recall@10 of `got` against `truth`.
fn recall_of(truth: &[Vec<String>], got: &[Vec<String>]) -> f64 {
    let hit: usize = truth
        .iter()
        .zip(got)
        .map(|(t, g)| g.iter().filter(|id| t.contains(id)).count())
        .sum();
    hit as f64 / truth.iter().map(Vec::len).sum::<usize>().max(1) as f64
}

#[test]
fn the_binary_scan_finds_what_the_exact_scan_finds_for_image_and_text_queries() {
    use crate::retrieve::synth::{self, Kind};
    let (dim, n, nq) = (512, 10_000, 40);
    let subjects = synth::subjects(n);
    let data = synth::vectors(Kind::Images, n, dim, subjects, 7);
    let items: Vec<_> = data
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, v)| (format!("i{i}"), v.to_vec(), Arc::new(Metadata::new())))
        .collect();
    let mut flat = FlatIndex::new(dim, 2);
    for (id, v, m) in &items {
        flat.upsert(id.clone(), v, Arc::clone(m));
    }
    let params = AnnParams {
        oversample: 10,
        ..AnnParams::default()
    };
    let mut ann = AnnIndex::build(dim, 2, params, &items).unwrap();
    let none = Metadata::new();
    let ids = |s: Vec<Scored>| s.into_iter().map(|s| s.id).collect::<Vec<_>>();
    for (kind, seed) in [(Kind::Images, 99), (Kind::Texts, 123)] {
        let queries = synth::vectors(kind, nq, dim, subjects, seed);
        let (mut truth, mut got) = (Vec::new(), Vec::new());
        for q in queries.chunks_exact(dim) {
            truth.push(ids(flat.search(q, 10, &none)));
            let (found, plan) = ann.search_planned(q, 10, &none);
            assert_eq!(plan, Plan::Binary);
            got.push(ids(found));
            // Asked for exact, exactly the exact answer.
            let (exact, plan) = ann.search_with(q, 10, &none, true);
            assert_eq!(plan, Plan::ExactAll);
            assert_eq!(ids(exact), *truth.last().unwrap());
        }
        let r = recall_of(&truth, &got);
        assert!(r >= 0.9, "{kind:?} queries: recall@10 {r}");
    }
    // Codes follow writes: a replaced vector is found by its new position, a deleted id never.
    let target = synth::vectors(Kind::Texts, 1, dim, subjects, 5);
    ann.upsert("i3".into(), &target, Arc::new(Metadata::new()));
    assert_eq!(ann.search(&target, 1, &none)[0].id, "i3");
    ann.delete("i3");
    assert!(ann.search(&target, 10, &none).iter().all(|s| s.id != "i3"));
}
