//! Zero-shot classification against open_clip's own zero-shot code (scripts/reference_classify.py),
//! label sets (precomputed, computed in the background, persisted) and the bad-input table.

use std::time::Duration;

use crate::common::*;
use clip_serve::grpc::pb::{self, classify_client::ClassifyClient};
use tonic::{Code, transport::Channel};

#[derive(Debug, serde::Deserialize)]
struct ClassifyReference {
    logit_scale: f32,
    images: Vec<RefImage>,
    cases: Vec<RefCase>,
}

#[derive(Debug, serde::Deserialize)]
struct RefImage {
    file: String,
}

#[derive(Debug, serde::Deserialize)]
struct RefCase {
    name: String,
    label_set: Option<String>,
    labels: Vec<String>,
    templates: Vec<String>,
    results: Vec<RefResult>,
}

#[derive(Debug, serde::Deserialize)]
struct RefResult {
    file: String,
    cosine: Vec<f32>,
    probabilities: Vec<f32>,
}

fn classify_reference() -> ClassifyReference {
    let path = fixtures().join("reference").join("classify.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn client(server: &TestServer) -> ClassifyClient<Channel> {
    ClassifyClient::new(server.channel.clone())
}

fn images(reference: &ClassifyReference) -> Vec<bytes::Bytes> {
    reference
        .images
        .iter()
        .map(|i| read_fixture(&i.file))
        .collect()
}

/// Every label's probability and cosine within 1e-4 of open_clip's, and the same ranking.
fn assert_matches(case: &RefCase, response: &pb::ClassifyResponse) {
    assert_eq!(response.results.len(), case.results.len(), "{}", case.name);
    for (got, want) in response.results.iter().zip(&case.results) {
        assert_eq!(got.scores.len(), case.labels.len());
        for s in &got.scores {
            let i = case
                .labels
                .iter()
                .position(|l| *l == s.label)
                .expect("known label");
            let (dp, dc) = (
                (s.probability - want.probabilities[i]).abs(),
                (s.score - want.cosine[i]).abs(),
            );
            assert!(
                dp < 1e-4 && dc < 1e-4,
                "{} {} {}: probability {} vs {}, cosine {} vs {}",
                case.name,
                want.file,
                s.label,
                s.probability,
                want.probabilities[i],
                s.score,
                want.cosine[i]
            );
        }
        // Best first, in open_clip's order (ties within float noise may swap).
        for pair in got.scores.windows(2) {
            assert!(pair[0].probability >= pair[1].probability);
            let (a, b) = (
                case.labels
                    .iter()
                    .position(|l| *l == pair[0].label)
                    .unwrap(),
                case.labels
                    .iter()
                    .position(|l| *l == pair[1].label)
                    .unwrap(),
            );
            assert!(
                want.probabilities[a] >= want.probabilities[b] - 1e-6,
                "{} {}: {} ranked above {}",
                case.name,
                want.file,
                pair[0].label,
                pair[1].label
            );
        }
    }
}

#[tokio::test]
async fn inline_labels_and_the_precomputed_set_match_open_clip() {
    let reference = classify_reference();
    let server = serve(config(&tiny_model())).await;
    let info = server
        .info()
        .get_info(pb::GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.logit_scale, reference.logit_scale);
    let images = images(&reference);
    for case in &reference.cases {
        let request = pb::ClassifyRequest {
            images: images.clone(),
            labels: if case.label_set.is_some() {
                vec![]
            } else {
                case.labels.clone()
            },
            label_set: case.label_set.clone().unwrap_or_default(),
            templates: if case.label_set.is_some() || case.templates == ["a photo of a {}."] {
                vec![] // the default template
            } else {
                case.templates.clone()
            },
            top_k: 0,
        };
        let response = client(&server)
            .classify(request)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", case.name))
            .into_inner();
        assert_matches(case, &response);
    }
    // The cifar-10 classifier came from the model directory (the exporter's precomputed file).
    let set = client(&server)
        .get_label_set(pb::GetLabelSetRequest {
            name: "cifar-10".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.state, pb::LabelSetState::Ready as i32);
    assert_eq!(set.classifier_source, "model-dir");
    assert_eq!(set.labels.len(), 10);
    assert_eq!(set.templates.len(), 18);
}

#[tokio::test]
async fn top_k_keeps_the_best_with_probabilities_over_all_labels() {
    let reference = classify_reference();
    let case = &reference.cases[0];
    let server = serve(config(&tiny_model())).await;
    let request = |top_k| pb::ClassifyRequest {
        images: images(&reference)[..1].to_vec(),
        labels: case.labels.clone(),
        top_k,
        ..Default::default()
    };
    let all = client(&server)
        .classify(request(0))
        .await
        .unwrap()
        .into_inner();
    let top = client(&server)
        .classify(request(2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(top.results[0].scores.len(), 2);
    assert_eq!(top.results[0].scores[..], all.results[0].scores[..2]);
    let many = client(&server)
        .classify(request(99))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(many.results[0].scores.len(), case.labels.len());
}

async fn wait_ready(client: &mut ClassifyClient<Channel>, name: &str) -> pb::LabelSet {
    for _ in 0..600 {
        let set = client
            .get_label_set(pb::GetLabelSetRequest { name: name.into() })
            .await
            .expect("get")
            .into_inner();
        if set.state != pb::LabelSetState::Building as i32 {
            return set;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("label set {name} never finished building");
}

#[tokio::test]
async fn a_set_without_precomputed_classifier_is_built_in_the_background_and_cached() {
    let reference = classify_reference();
    let case = reference
        .cases
        .iter()
        .find(|c| c.label_set.as_deref() == Some("cifar-10"))
        .expect("cifar-10 case");
    // The model without its classifiers/ directory.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_dir(&tiny_model(), &model);
    std::fs::remove_dir_all(model.join("classifiers")).unwrap();
    let data_dir = fresh_data_dir();
    let mut cfg = config(&model);
    cfg.data_dir = data_dir.clone();
    let server = serve(cfg.clone()).await;
    let mut c = client(&server);
    let request = pb::ClassifyRequest {
        images: images(&reference),
        label_set: "cifar-10".into(),
        ..Default::default()
    };
    let listed = c
        .list_label_sets(pb::ListLabelSetsRequest {})
        .await
        .unwrap()
        .into_inner();
    let cifar = listed
        .label_sets
        .iter()
        .find(|s| s.name == "cifar-10")
        .unwrap();
    assert_eq!(cifar.state, pb::LabelSetState::NotBuilt as i32);
    // The first use starts the build and is told to come back.
    let err = c.classify(request.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("being computed"),
        "{}",
        err.message()
    );
    let set = wait_ready(&mut c, "cifar-10").await;
    assert_eq!(set.state, pb::LabelSetState::Ready as i32, "{set:?}");
    assert_eq!(set.classifier_source, "computed");
    let response = c.classify(request.clone()).await.unwrap().into_inner();
    assert_matches(case, &response);
    server.server.shutdown().await.unwrap();

    // After a restart the classifier comes from the data directory.
    let server = serve(cfg).await;
    let mut c = client(&server);
    let set = c
        .get_label_set(pb::GetLabelSetRequest {
            name: "cifar-10".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.classifier_source, "data-dir");
    assert_matches(case, &c.classify(request).await.unwrap().into_inner());
}

#[tokio::test]
async fn created_sets_persist_across_restarts_and_can_be_deleted() {
    let reference = classify_reference();
    let case = &reference.cases[1]; // inline labels, three templates
    let data_dir = fresh_data_dir();
    let mut cfg = config(&tiny_model());
    cfg.data_dir = data_dir.clone();
    let server = serve(cfg.clone()).await;
    let mut c = client(&server);
    let created = c
        .create_label_set(pb::CreateLabelSetRequest {
            name: "my-set".into(),
            labels: case.labels.clone(),
            templates: case.templates.clone(),
        })
        .await
        .expect("created")
        .into_inner();
    assert_eq!(created.name, "my-set");
    assert!(!created.builtin);
    assert_eq!(created.label_count as usize, case.labels.len());
    let set = wait_ready(&mut c, "my-set").await;
    assert_eq!(set.state, pb::LabelSetState::Ready as i32, "{set:?}");
    let request = pb::ClassifyRequest {
        images: images(&reference),
        label_set: "my-set".into(),
        ..Default::default()
    };
    assert_matches(
        case,
        &c.classify(request.clone()).await.unwrap().into_inner(),
    );
    let again = c
        .create_label_set(pb::CreateLabelSetRequest {
            name: "my-set".into(),
            labels: vec!["x".into()],
            templates: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    server.server.shutdown().await.unwrap();

    let server = serve(cfg.clone()).await;
    let mut c = client(&server);
    let set = wait_ready(&mut c, "my-set").await;
    assert_eq!(set.labels, case.labels);
    assert_eq!(set.templates, case.templates);
    assert_eq!(set.classifier_source, "data-dir");
    assert_matches(
        case,
        &c.classify(request.clone()).await.unwrap().into_inner(),
    );
    let names: Vec<String> = c
        .list_label_sets(pb::ListLabelSetsRequest {})
        .await
        .unwrap()
        .into_inner()
        .label_sets
        .into_iter()
        .map(|s| s.name)
        .collect();
    for name in ["cifar-10", "imagenet-1k", "imagenet-1k-simple", "my-set"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    c.delete_label_set(pb::DeleteLabelSetRequest {
        name: "my-set".into(),
    })
    .await
    .expect("deleted");
    let gone = c.classify(request).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let builtin = c
        .delete_label_set(pb::DeleteLabelSetRequest {
            name: "cifar-10".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(builtin.code(), Code::FailedPrecondition);
    server.server.shutdown().await.unwrap();
    let server = serve(cfg).await;
    let missing = client(&server)
        .get_label_set(pb::GetLabelSetRequest {
            name: "my-set".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "deleted for good");
}

#[tokio::test]
async fn bad_classify_requests_get_clear_errors() {
    let reference = classify_reference();
    let mut cfg = config(&tiny_model());
    cfg.classify.prompts.max_labels = 5;
    cfg.classify.max_label_sets = 1;
    let max_text_bytes = cfg.embed.limits.max_text_bytes;
    let server = serve(cfg).await;
    let mut c = client(&server);
    let image = images(&reference)[0].clone();
    let base = pb::ClassifyRequest {
        images: vec![image.clone()],
        labels: vec!["cat".into(), "dog".into()],
        ..Default::default()
    };
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cases: Vec<(&str, pb::ClassifyRequest, Code, &str)> = vec![
        (
            "no labels",
            pb::ClassifyRequest {
                labels: vec![],
                ..base.clone()
            },
            Code::InvalidArgument,
            "no labels",
        ),
        (
            "duplicate labels",
            pb::ClassifyRequest {
                labels: strings(&["cat", "dog", "cat"]),
                ..base.clone()
            },
            Code::InvalidArgument,
            "labels[2]: duplicate of labels[0]",
        ),
        (
            "too many labels",
            pb::ClassifyRequest {
                labels: strings(&["a", "b", "c", "d", "e", "f"]),
                ..base.clone()
            },
            Code::InvalidArgument,
            "--max-labels",
        ),
        (
            "template without {}",
            pb::ClassifyRequest {
                templates: strings(&["a photo of a {}.", "a photo"]),
                ..base.clone()
            },
            Code::InvalidArgument,
            "templates[1]",
        ),
        (
            "template with two {}",
            pb::ClassifyRequest {
                templates: strings(&["{} and {}"]),
                ..base.clone()
            },
            Code::InvalidArgument,
            "exactly one {}",
        ),
        (
            "labels and a label set",
            pb::ClassifyRequest {
                label_set: "cifar-10".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "not both",
        ),
        (
            "templates with a label set",
            pb::ClassifyRequest {
                labels: vec![],
                label_set: "cifar-10".into(),
                templates: strings(&["a {}"]),
                ..base.clone()
            },
            Code::InvalidArgument,
            "own templates",
        ),
        (
            "unknown label set",
            pb::ClassifyRequest {
                labels: vec![],
                label_set: "nope".into(),
                ..base.clone()
            },
            Code::NotFound,
            "nope",
        ),
        (
            "no images",
            pb::ClassifyRequest {
                images: vec![],
                ..base.clone()
            },
            Code::InvalidArgument,
            "images",
        ),
        (
            "not an image",
            pb::ClassifyRequest {
                images: vec![image.clone(), bytes::Bytes::from_static(b"not an image")],
                ..base.clone()
            },
            Code::InvalidArgument,
            "images[1]",
        ),
        (
            "a prompt over the text limit",
            pb::ClassifyRequest {
                labels: vec!["x".repeat(max_text_bytes - 5), "dog".into()],
                templates: strings(&["a photo of a {}."]),
                ..base.clone()
            },
            Code::InvalidArgument,
            "byte prompt",
        ),
    ];
    for (what, request, code, needle) in cases {
        let err = c.classify(request).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(err.message().contains(needle), "{what}: {}", err.message());
    }
    for (name, code) in [
        ("Bad Name", Code::InvalidArgument),
        ("cifar-10", Code::AlreadyExists),
        ("", Code::InvalidArgument),
    ] {
        let err = c
            .create_label_set(pb::CreateLabelSetRequest {
                name: name.into(),
                labels: vec!["x".into()],
                templates: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{name:?}: {err:?}");
    }
    // --max-label-sets 1: the first fits, the second is refused.
    c.create_label_set(pb::CreateLabelSetRequest {
        name: "one".into(),
        labels: vec!["x".into()],
        templates: vec![],
    })
    .await
    .expect("the first set fits");
    let err = c
        .create_label_set(pb::CreateLabelSetRequest {
            name: "two".into(),
            labels: vec!["x".into()],
            templates: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("--max-label-sets"),
        "{}",
        err.message()
    );
    let err = c
        .delete_label_set(pb::DeleteLabelSetRequest {
            name: "never-made".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The server is unharmed.
    assert!(c.classify(base).await.is_ok());
}

#[tokio::test]
async fn repeated_inline_labels_come_from_the_text_cache() {
    let reference = classify_reference();
    let server = serve(config(&tiny_model())).await;
    let mut c = client(&server);
    let request = pb::ClassifyRequest {
        images: images(&reference)[..1].to_vec(),
        labels: vec!["cat".into(), "dog".into(), "bird".into()],
        templates: vec!["a photo of a {}.".into(), "art of a {}.".into()],
        ..Default::default()
    };
    let first = c.classify(request.clone()).await.unwrap().into_inner();
    let metrics = http_get(server.server.http_addr, "/metrics").await.1;
    assert_eq!(
        metric_value(&metrics, "clip_text_cache_misses_total"),
        Some(6.0)
    );
    assert_eq!(
        metric_value(&metrics, "clip_text_cache_hits_total"),
        Some(0.0)
    );
    let second = c.classify(request).await.unwrap().into_inner();
    assert_eq!(first.results, second.results);
    let metrics = http_get(server.server.http_addr, "/metrics").await.1;
    assert_eq!(
        metric_value(&metrics, "clip_text_cache_misses_total"),
        Some(6.0)
    );
    assert_eq!(
        metric_value(&metrics, "clip_text_cache_hits_total"),
        Some(6.0)
    );
    assert!(metric_value(&metrics, "clip_text_cache_bytes").unwrap() > 0.0);
}
