//! Odd-but-valid files PIL opens (issue 22): each one's preprocessed pixels equal PIL's
//! (`tests/fixtures/reference/odd.json`, made by `scripts/make_odd_fixtures.py`), and its header
//! dimensions are read right by the decode-cost estimate.

use super::{ImageOptions, PreprocessConfig, decode_cost, preprocess_within};

#[derive(serde::Deserialize)]
struct Odd {
    images: Vec<OddImage>,
}

#[derive(serde::Deserialize)]
struct OddImage {
    file: String,
    pil_mode: String,
    width: usize,
    height: usize,
    pixels: String,
}

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// An 8-bit RGB PNG as HWC bytes.
fn read_rgb_png(path: &std::path::Path) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("png size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
    buf.truncate(info.buffer_size());
    buf
}

/// Every odd fixture: the header's size as PIL reads it, and open_clip's pixels exactly (PIL's
/// resize of these modes is integer arithmetic, or float rounded the same way here).
#[test]
fn odd_files_preprocess_like_pil() {
    let text = std::fs::read_to_string(fixtures().join("reference/odd.json")).expect("odd.json");
    let odd: Odd = serde_json::from_str(&text).expect("odd.json parses");
    assert!(odd.images.len() >= 15, "odd.json lists the fixtures");
    let cfg = PreprocessConfig::default();
    let options = ImageOptions {
        max_pixels: 100_000_000,
        apply_exif_orientation: false,
    };
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for image in &odd.images {
        let bytes = std::fs::read(fixtures().join(&image.file)).expect("fixture");
        let result = decode_cost(&bytes, options.max_pixels).and_then(|cost| {
            if cost.dimensions != Some((image.width, image.height)) {
                failures.push(format!(
                    "{}: header read as {:?}, PIL says {}x{}",
                    image.file, cost.dimensions, image.width, image.height
                ));
            }
            preprocess_within(&bytes, &cfg, &options, &cost)
        });
        let ours = match result {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{} ({}): refused: {e}", image.file, image.pil_mode));
                continue;
            }
        };
        let theirs = read_rgb_png(&fixtures().join(&image.pixels));
        assert_eq!(ours.len(), theirs.len(), "{}", image.file);
        let max = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        report.push(format!("{:40} {:4} max {max}", image.file, image.pil_mode));
        if max > 0 {
            failures.push(format!("{}: off by up to {max} levels", image.file));
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{failures:#?}\n{}", report.join("\n"));
}
