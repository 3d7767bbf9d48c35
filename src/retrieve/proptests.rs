//! Property tests of the vector indexes over random small collections built by random upserts,
//! replacements and deletes:
//!
//! - Exact and approximate agree when asked for exact: a filtered search the planner answers by
//!   the exact scan ([`Plan::ExactMatches`]; every filter in a collection under
//!   `AnnParams::exact_max_rows` rows, including one every item matches, which is the whole
//!   collection's exact top k) returns what [`FlatIndex`] returns: the same scores, the same ids
//!   (up to the order of equal scores).
//! - Filters never return a non-matching item, on either index and on every plan (the graph with
//!   the filter as predicate, or the binary scan, is forced with `exact_max_rows` 0), and never come up short: as many
//!   results as `min(k, matches)`, no id twice, each score the item's exact dot product.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use proptest::prelude::*;

use super::{
    ann::{AnnIndex, AnnParams, Plan},
    index::{FlatIndex, Metadata, Scored, VectorIndex, dot},
};

const DIM: usize = 6;

/// What the indexes should hold: id -> (vector, metadata).
type Model = BTreeMap<String, (Vec<f32>, Metadata)>;

/// A unit vector from small integer components (so equal vectors, and equal scores, happen).
fn unit() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-2i8..=2, DIM).prop_map(|mut v| {
        if v.iter().all(|&x| x == 0) {
            v[0] = 1;
        }
        let v: Vec<f32> = v.into_iter().map(f32::from).collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.into_iter().map(|a| a / n).collect()
    })
}

/// Metadata over two keys with three values each (a key may be absent), and `all: yes`.
fn metadata() -> impl Strategy<Value = Metadata> {
    (prop::option::of(0u8..3), prop::option::of(0u8..3)).prop_map(|(a, b)| {
        let mut m = Metadata::from([("all".to_string(), "yes".to_string())]);
        if let Some(a) = a {
            m.insert("a".into(), a.to_string());
        }
        if let Some(b) = b {
            m.insert("b".into(), b.to_string());
        }
        m
    })
}

/// A filter of zero to two pairs, or the pair every item holds; values may match nothing.
fn filter() -> impl Strategy<Value = Metadata> {
    prop_oneof![
        1 => Just(Metadata::new()),
        1 => Just(Metadata::from([("all".to_string(), "yes".to_string())])),
        4 => (prop::option::of(0u8..4), prop::option::of(0u8..4)).prop_map(|(a, b)| {
            let mut m = Metadata::new();
            if let Some(a) = a {
                m.insert("a".into(), a.to_string());
            }
            if let Some(b) = b {
                m.insert("b".into(), b.to_string());
            }
            m
        }),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Upsert(u8, Vec<f32>, Metadata),
    Delete(u8),
}

/// Ids from a small pool, so replacements and deletes of present ids are common.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => (0u8..40, unit(), metadata()).prop_map(|(id, v, m)| Op::Upsert(id, v, m)),
        1 => (0u8..40).prop_map(Op::Delete),
    ];
    prop::collection::vec(op, 1..80)
}

/// Both indexes and the model (id -> vector, metadata) after `ops`.
fn build(ops: &[Op], params: AnnParams) -> (FlatIndex, AnnIndex, Model) {
    let mut flat = FlatIndex::new(DIM, 1);
    let mut ann = AnnIndex::new(DIM, 1, params).unwrap();
    let mut model = BTreeMap::new();
    for op in ops {
        match op {
            Op::Upsert(id, v, m) => {
                let id = format!("id{id}");
                flat.upsert(id.clone(), v, Arc::new(m.clone()));
                ann.upsert(id.clone(), v, Arc::new(m.clone()));
                model.insert(id, (v.clone(), m.clone()));
            }
            Op::Delete(id) => {
                let id = format!("id{id}");
                let held = model.remove(&id).is_some();
                assert_eq!(flat.delete(&id), held);
                assert_eq!(ann.delete(&id), held);
            }
        }
    }
    assert_eq!(flat.len(), model.len());
    assert_eq!(ann.len(), model.len());
    (flat, ann, model)
}

fn matches(m: &Metadata, filter: &Metadata) -> bool {
    filter.iter().all(|(k, v)| m.get(k) == Some(v))
}

/// Results that hold only matching items of the model, once each, with their exact scores, best
/// first, and as many as `min(k, matches)`.
fn check_filtered(
    got: &[Scored],
    model: &Model,
    query: &[f32],
    k: usize,
    filter: &Metadata,
) -> Result<(), TestCaseError> {
    let matching = model.values().filter(|(_, m)| matches(m, filter)).count();
    prop_assert_eq!(got.len(), k.min(matching), "never short, never over k");
    let mut ids = HashSet::new();
    for s in got {
        prop_assert!(ids.insert(&s.id), "{} twice", s.id);
        let (v, m) = model.get(&s.id).expect("a held item");
        prop_assert!(matches(m, filter), "{} does not match {:?}", s.id, filter);
        prop_assert_eq!(&*s.metadata, m, "its current metadata");
        prop_assert_eq!(s.score, dot(v, query), "its exact score");
    }
    prop_assert!(
        got.windows(2).all(|w| w[0].score >= w[1].score),
        "best first"
    );
    Ok(())
}

/// The same results up to the order of equal scores: equal score lists, the same ids above the
/// last score, and at the last score ids of that score.
fn assert_same(
    a: &[Scored],
    b: &[Scored],
    model: &Model,
    query: &[f32],
) -> Result<(), TestCaseError> {
    let scores = |s: &[Scored]| s.iter().map(|s| s.score).collect::<Vec<_>>();
    prop_assert_eq!(scores(a), scores(b));
    let Some(last) = a.last().map(|s| s.score) else {
        return Ok(());
    };
    let above = |s: &[Scored]| {
        s.iter()
            .filter(|s| s.score > last)
            .map(|s| s.id.clone())
            .collect::<HashSet<_>>()
    };
    prop_assert_eq!(above(a), above(b));
    for s in a.iter().chain(b).filter(|s| s.score == last) {
        prop_assert_eq!(dot(&model[&s.id].0, query), last);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Asked for exact, the approximate index returns what the exact index does, whatever the
    /// path it would otherwise take (graph or binary scan, filter or none, `exact_max_rows` 0
    /// so that no filter is routed to the exact scan by size).
    #[test]
    fn the_ann_index_equals_the_flat_index_when_exact_is_asked(
        ops in ops(),
        query in unit(),
        k in 1usize..12,
        filter in filter(),
        graph in any::<bool>(),
    ) {
        let params = AnnParams { exact_max_rows: 0, graph, ..AnnParams::default() };
        let (flat, ann, model) = build(&ops, params);
        let (got, plan) = ann.search_with(&query, k, &filter, true);
        prop_assert!(matches!(plan, Plan::ExactMatches | Plan::ExactAll | Plan::Empty), "{:?}", plan);
        let want = flat.search(&query, k, &filter);
        assert_same(&got, &want, &model, &query)?;
        check_filtered(&want, &model, &query, k, &filter)?;
    }

    /// Below `exact_max_rows` a filter is answered by the exact scan, equal to the exact index.
    #[test]
    fn the_ann_index_equals_the_flat_index_when_the_plan_is_exact(
        ops in ops(),
        query in unit(),
        k in 1usize..12,
        filter in filter().prop_filter("a filter", |f| !f.is_empty()),
    ) {
        let (flat, ann, model) = build(&ops, AnnParams::default());
        let (got, plan) = ann.search_planned(&query, k, &filter);
        prop_assert!(matches!(plan, Plan::ExactMatches | Plan::Empty), "{:?}", plan);
        let want = flat.search(&query, k, &filter);
        assert_same(&got, &want, &model, &query)?;
        check_filtered(&want, &model, &query, k, &filter)?;
    }

    /// Filters never return a non-matching item nor come up short, on the flat index and on each
    /// of the approximate index's plans (exact scan, filtered graph with its fallbacks, graph).
    #[test]
    fn filters_never_return_a_non_matching_item(
        ops in ops(),
        query in unit(),
        k in 1usize..12,
        filter in filter(),
        exact_max_rows in prop_oneof![Just(0usize), Just(1), Just(20_000)],
        graph in any::<bool>(),
        oversample in 1usize..4,
    ) {
        let params = AnnParams { exact_max_rows, graph, oversample, ..AnnParams::default() };
        let (flat, ann, model) = build(&ops, params);
        check_filtered(&flat.search(&query, k, &filter), &model, &query, k, &filter)?;
        let (got, _plan) = ann.search_planned(&query, k, &filter);
        check_filtered(&got, &model, &query, k, &filter)?;
    }
}
