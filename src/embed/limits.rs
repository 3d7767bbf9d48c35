//! Request limits (the `--max-*` flags Info reports) and the checks every embedding request goes
//! through before any work: item counts, encoded image size, text length. Errors say which item.

use crate::common::limit::{MAX_IMAGE_BYTES, MAX_ITEMS_PER_REQUEST, MAX_TEXT_BYTES};
use bytes::Bytes;

use crate::common::{Field, List, ServiceError};

/// Request limits; each one answers a client with INVALID_ARGUMENT or RESOURCE_EXHAUSTED, never a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_items_per_request: usize,
    pub max_image_bytes: usize,
    pub max_image_pixels: u64,
    pub max_text_bytes: usize,
    pub max_message_bytes: usize,
    pub max_concurrent_requests: usize,
}

impl Limits {
    /// A request's list has at least one and at most `max_items_per_request` items.
    pub fn check_count(&self, list: List, n: usize) -> Result<(), ServiceError> {
        let max = self.max_items_per_request;
        if n == 0 {
            return Err(ServiceError::invalid(
                Field::List(list),
                "empty request; send at least one item",
            ));
        }
        if n > max {
            return Err(ServiceError::invalid(
                Field::List(list),
                format!("{n} items, over the limit of {max} per request ({MAX_ITEMS_PER_REQUEST})"),
            ));
        }
        Ok(())
    }

    /// Every image is non-empty and within `max_image_bytes`.
    pub fn check_images(&self, images: &[Bytes]) -> Result<(), ServiceError> {
        let max = self.max_image_bytes;
        for (i, bytes) in images.iter().enumerate() {
            if bytes.is_empty() {
                return Err(ServiceError::invalid_item(
                    List::Images,
                    i,
                    "empty image (0 bytes)",
                ));
            }
            if bytes.len() > max {
                return Err(ServiceError::invalid_item(
                    List::Images,
                    i,
                    format!(
                        "image is {} bytes, over the limit of {max} ({MAX_IMAGE_BYTES})",
                        bytes.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every text is within `max_text_bytes` (empty texts are valid: open_clip encodes them).
    pub fn check_texts(&self, texts: &[String]) -> Result<(), ServiceError> {
        let max = self.max_text_bytes;
        match texts.iter().position(|t| t.len() > max) {
            Some(i) => Err(ServiceError::invalid_item(
                List::Texts,
                i,
                format!(
                    "text is {} bytes, over the limit of {max} ({MAX_TEXT_BYTES})",
                    texts[i].len()
                ),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_items_per_request: 2,
        max_image_bytes: 4,
        max_image_pixels: 100,
        max_text_bytes: 3,
        max_message_bytes: 1000,
        max_concurrent_requests: 1,
    };

    #[test]
    fn counts_name_the_list() {
        assert!(LIMITS.check_count(List::Images, 2).is_ok());
        let e = LIMITS.check_count(List::Texts, 0).unwrap_err().to_string();
        assert_eq!(e, "texts: empty request; send at least one item");
        let e = LIMITS.check_count(List::Images, 3).unwrap_err().to_string();
        assert!(
            e.starts_with("images: 3 items") && e.contains("--max-items-per-request"),
            "{e}"
        );
    }

    #[test]
    fn images_and_texts_name_the_item() {
        assert!(
            LIMITS
                .check_images(&[vec![1].into(), vec![1, 2, 3, 4].into()])
                .is_ok()
        );
        let e = LIMITS
            .check_images(&[vec![1].into(), Bytes::new()])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "images[1]: empty image (0 bytes)");
        let e = LIMITS
            .check_images(&[vec![0; 5].into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("images[0]: image is 5 bytes") && e.contains("--max-image-bytes"),
            "{e}"
        );
        assert!(LIMITS.check_texts(&["".into(), "abc".into()]).is_ok());
        let e = LIMITS
            .check_texts(&["a".into(), "abcd".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("texts[1]: text is 4 bytes") && e.contains("--max-text-bytes"),
            "{e}"
        );
    }
}
