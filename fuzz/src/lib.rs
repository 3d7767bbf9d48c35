//! What the fuzz targets share: the target bodies (`targets/`, also run over the committed seeds by
//! `cargo test`, see tests/integration/fuzz_seeds.rs) and, for `image` and `text`, the preprocessing
//! code itself, compiled here from its source file so that their sanitizer build links the decoders and
//! not the server. src/preprocess imports nothing else of the crate (scripts/check_architecture.py
//! keeps it so), which is what makes this inclusion work.

#[allow(dead_code, unreachable_pub)]
#[path = "../../src/preprocess/mod.rs"]
pub mod preprocess;

#[path = "targets/image.rs"]
pub mod image;
#[path = "targets/text.rs"]
pub mod text;

#[cfg(feature = "app")]
#[path = "targets/http_json.rs"]
pub mod http_json;
#[cfg(feature = "app")]
#[path = "targets/proto.rs"]
pub mod proto;
