//! Preprocessing equal to open_clip's: images (decode, resize, crop, RGB, normalize) and texts
//! (clean, tokenize, pad/truncate).
//!
//! Layer: the bottom. Pure functions, no tokio, no crate imports: each step names the Python
//! reference it ports.

pub mod image;
pub mod text;
