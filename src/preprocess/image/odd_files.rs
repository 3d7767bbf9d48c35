//! Odd-but-valid files PIL opens (issue 22): each one's preprocessed pixels equal PIL's
//! (`tests/fixtures/reference/odd.json`, made by `scripts/make_odd_fixtures.py`), and its header
//! dimensions are read right by the decode-cost estimate. Among them: TIFFs with an Orientation
//! (PIL transposes every TIFF by it as it loads), FillOrder 2 with compression (CCITT, LZW,
//! Deflate, PackBits), associated alpha (8 and 16 bits) and RGB with an undeclared fourth sample.

use super::{ImageOptions, PreprocessConfig, decode_cost, inspect, preprocess_within};

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
    /// The size as stored, before the Orientation PIL applies as it loads a TIFF.
    stored_width: usize,
    stored_height: usize,
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
    assert!(odd.images.len() >= 50, "odd.json lists the fixtures");
    let cfg = PreprocessConfig::default();
    let options = ImageOptions {
        max_pixels: 100_000_000,
        apply_exif_orientation: false,
    };
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for image in &odd.images {
        let bytes = std::fs::read(fixtures().join(&image.file)).expect("fixture");
        // The image as PIL holds it once loaded: its size (after the Orientation of a TIFF)
        // and its mode.
        if let Ok((w, h, mode)) = inspect(&bytes, options.max_pixels)
            && (w, h, mode) != (image.width, image.height, image.pil_mode.as_str())
        {
            failures.push(format!(
                "{}: decoded as {w}x{h} {mode}, PIL holds {}x{} {}",
                image.file, image.width, image.height, image.pil_mode
            ));
        }
        let result = decode_cost(&bytes, options.max_pixels).and_then(|cost| {
            if cost.dimensions != Some((image.stored_width, image.stored_height)) {
                failures.push(format!(
                    "{}: header read as {:?}, PIL says {}x{}",
                    image.file, cost.dimensions, image.stored_width, image.stored_height
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

/// Differential check against Pillow on a directory of files (by hand, not in CI):
/// `CLIP_SERVE_ODD_IN=dir CLIP_SERVE_ODD_OUT=out cargo test --lib odd_files::dump -- --ignored`
/// writes `<file>.rgb` (the preprocessed 224 x 224 RGB levels) or `<file>.err` (the refusal) per
/// file; `scripts/odd_parity.py` makes Pillow's side and compares.
#[test]
#[ignore = "by hand: needs CLIP_SERVE_ODD_IN / CLIP_SERVE_ODD_OUT"]
fn dump() {
    let (Ok(input), Ok(out)) = (
        std::env::var("CLIP_SERVE_ODD_IN"),
        std::env::var("CLIP_SERVE_ODD_OUT"),
    ) else {
        panic!("set CLIP_SERVE_ODD_IN and CLIP_SERVE_ODD_OUT");
    };
    let (input, out) = (std::path::Path::new(&input), std::path::Path::new(&out));
    std::fs::create_dir_all(out).expect("output directory");
    let cfg = PreprocessConfig::default();
    let options = ImageOptions::default();
    let mut names: Vec<_> = std::fs::read_dir(input)
        .expect("input directory")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    for name in names {
        let bytes = std::fs::read(input.join(&name)).expect("read");
        let result = decode_cost(&bytes, options.max_pixels)
            .and_then(|cost| preprocess_within(&bytes, &cfg, &options, &cost));
        let name = name.to_string_lossy();
        match result {
            Ok(px) => std::fs::write(out.join(format!("{name}.rgb")), px),
            Err(e) => std::fs::write(out.join(format!("{name}.err")), e.to_string()),
        }
        .expect("write");
    }
}
