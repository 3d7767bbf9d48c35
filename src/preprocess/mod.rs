//! Preprocessing equal to open_clip's: images (decode, resize, crop, RGB, normalize) and texts
//! (clean, tokenize, pad/truncate).

pub mod image;
pub mod text;
