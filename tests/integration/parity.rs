//! Parity with open_clip's own pipeline (scripts/reference.py: PIL preprocessing, open_clip.tokenize,
//! torch forward) on the committed fixtures. Preprocessing is checked at the tensor level because a
//! random-weight model is nearly blind to it.

use crate::common::*;
use clip_serve::{
    grpc::pb,
    preprocess::{
        image::{ImageOptions, PreprocessConfig, preprocess},
        text::ClipTokenizer,
    },
};

#[test]
fn token_ids_equal_open_clip_tokenize() {
    let reference = reference();
    let tokenizer = ClipTokenizer::from_file(
        &tiny_model().join("textual/tokenizer.json"),
        reference.context_length,
    )
    .expect("tokenizer");
    assert!(
        reference.texts.len() >= 40,
        "fixtures hold at least 40 texts"
    );
    let mut mismatches = Vec::new();
    for t in &reference.texts {
        let got = tokenizer.encode(&t.text);
        assert_eq!(got.ids.len(), reference.context_length);
        if got.ids != t.ids {
            mismatches.push(format!(
                "{:?}\n  ours:      {:?}\n  open_clip: {:?}",
                t.text, got.ids, t.ids
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} texts tokenize differently:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn preprocessed_pixels_equal_open_clip_preprocess() {
    let reference = reference();
    let cfg = PreprocessConfig::from_json_file(&tiny_model().join("visual/preprocess_cfg.json"))
        .expect("preprocess cfg");
    let options = ImageOptions {
        max_pixels: 100_000_000,
        apply_exif_orientation: false,
    };
    assert!(
        reference.images.len() >= 8,
        "fixtures hold at least 8 photographs"
    );
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for image in &reference.images {
        let bytes = std::fs::read(fixtures().join(&image.file)).expect("fixture image");
        let ours =
            preprocess(&bytes, &cfg, &options).unwrap_or_else(|e| panic!("{}: {e}", image.file));
        let (w, h, theirs) = read_rgb_png(&fixtures().join(&image.pixels));
        assert_eq!((h, w), cfg.size, "{}", image.pixels);
        assert_eq!(ours.len(), theirs.len(), "{}", image.file);
        let diffs: Vec<u32> = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| u32::from(a.abs_diff(*b)))
            .collect();
        let max = diffs.iter().copied().max().unwrap_or(0);
        let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
        report.push(format!(
            "{:40} {:6} max {max} mean {mean:.4}",
            image.file, image.pil_mode
        ));
        if max > 2 || mean > 0.2 {
            failures.push(image.file.clone());
        }
    }
    println!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "over the bar (max 2 levels, mean 0.2): {failures:?}\n{}",
        report.join("\n")
    );
}

#[tokio::test]
async fn embeddings_match_open_clip() {
    let reference = reference();
    let server = serve(config(&tiny_model())).await;
    let mut client = server.embed();

    let mut worst_text = 1.0f64;
    for chunk in reference.texts.chunks(32) {
        let texts = chunk.iter().map(|t| t.text.clone()).collect();
        let response = client
            .embed_texts(pb::EmbedTextsRequest { texts })
            .await
            .expect("EmbedTexts")
            .into_inner();
        assert_eq!(response.embeddings.len(), chunk.len());
        for (got, want) in response.embeddings.iter().zip(chunk) {
            assert_eq!(got.values.len(), reference.embed_dim);
            assert!((norm(&got.values) - 1.0).abs() < 1e-5, "not L2-normalized");
            let c = cosine(&got.values, &want.embedding);
            worst_text = worst_text.min(c);
            assert!(c >= 0.9999, "text {:?}: cosine {c}", want.text);
        }
    }

    let mut worst_image = 1.0f64;
    for image in &reference.images {
        let bytes = std::fs::read(fixtures().join(&image.file)).expect("fixture image");
        let response = client
            .embed_images(pb::EmbedImagesRequest {
                images: vec![bytes.into()],
            })
            .await
            .expect("EmbedImages")
            .into_inner();
        let got = &response.embeddings[0].values;
        assert!((norm(got) - 1.0).abs() < 1e-5, "not L2-normalized");
        let c = cosine(got, &image.embedding);
        worst_image = worst_image.min(c);
        assert!(c >= 0.999, "{}: cosine {c}", image.file);
    }
    println!(
        "worst cosine vs open_clip: texts {worst_text:.9} (1 - c = {:.1e}), images {worst_image:.9} (1 - c = {:.1e})",
        1.0 - worst_text,
        1.0 - worst_image
    );
    server.server.shutdown().await.expect("clean shutdown");
}

/// The same weights exported as uint8 NHWC input, int32 ids, static batch 1 and normalized outputs
/// (the awkward combination seen in the wild) give the same vectors.
#[tokio::test]
async fn immich_style_export_gives_the_same_vectors() {
    let reference = reference();
    let standard = serve(config(&tiny_model())).await;
    let immich = serve(config(&tiny_model_immich())).await;

    let info = immich
        .info()
        .get_info(pb::GetInfoRequest {})
        .await
        .expect("GetInfo")
        .into_inner();
    let image_tower = info.image.expect("image tower");
    assert!(
        !image_tower.dynamic_batch,
        "immich fixture has a static batch"
    );
    assert!(image_tower.input.contains("uint8"), "{}", image_tower.input);
    assert!(info.text.expect("text tower").input.contains("int32"));

    let texts: Vec<String> = reference
        .texts
        .iter()
        .take(8)
        .map(|t| t.text.clone())
        .collect();
    let a = standard
        .embed()
        .embed_texts(pb::EmbedTextsRequest {
            texts: texts.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let b = immich
        .embed()
        .embed_texts(pb::EmbedTextsRequest { texts })
        .await
        .unwrap()
        .into_inner();
    for (x, y) in a.embeddings.iter().zip(&b.embeddings) {
        assert!(cosine(&x.values, &y.values) > 0.99999);
    }
    let images: Vec<bytes::Bytes> = reference
        .images
        .iter()
        .take(4)
        .map(|i| read_fixture(&i.file))
        .collect();
    let a = standard
        .embed()
        .embed_images(pb::EmbedImagesRequest {
            images: images.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let b = immich
        .embed()
        .embed_images(pb::EmbedImagesRequest { images })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.embeddings.len(), 4);
    assert_eq!(b.embeddings.len(), 4);
    for (x, y) in a.embeddings.iter().zip(&b.embeddings) {
        assert!(cosine(&x.values, &y.values) > 0.99999);
    }
}
