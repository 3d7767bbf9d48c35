//! Checks and list pages of the Batch API, whatever the store.

use serde_json::Value;

use crate::common::ServiceError;

/// A list page: items after the cursor, and whether more follow.
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

pub(super) fn page<T: Clone>(
    mut all: Vec<(u64, String, T)>,
    after: Option<&str>,
    limit: usize,
    desc: bool,
) -> Page<T> {
    all.sort_by_key(|(seq, _, _)| *seq);
    if desc {
        all.reverse();
    }
    let start = match after {
        Some(a) => all
            .iter()
            .position(|(_, id, _)| id == a)
            .map_or(all.len(), |i| i + 1),
        None => 0,
    };
    let rest = all.len().saturating_sub(start);
    let items = all
        .into_iter()
        .skip(start)
        .take(limit)
        .map(|(_, _, t)| t)
        .collect();
    Page {
        items,
        has_more: rest > limit,
    }
}

/// Counts the request lines of a JSONL file (blank lines skipped), each a JSON object; refuses
/// the first that is not (by line number) or more than `max_lines`.
pub(super) fn check_jsonl(content: &[u8], max_lines: usize) -> Result<usize, ServiceError> {
    let mut count = 0;
    for (i, line) in content.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        count += 1;
        if count > max_lines {
            return Err(ServiceError::invalid_request(format!(
                "file: more than {max_lines} request lines (--batch-max-file-lines)"
            )));
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(_)) => {}
            Ok(_) => {
                return Err(ServiceError::invalid_request(format!(
                    "file: line {} is not a JSON object",
                    i + 1
                )));
            }
            Err(e) => {
                return Err(ServiceError::invalid_request(format!(
                    "file: line {} is not valid JSON: {e}",
                    i + 1
                )));
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_lines_are_counted_and_checked() {
        assert_eq!(check_jsonl(b"{}\n\n{\"a\":1}\n", 10).unwrap(), 2);
        let e = check_jsonl(b"{}\n[1]\n", 10).unwrap_err().to_string();
        assert!(e.contains("line 2 is not a JSON object"), "{e}");
        let e = check_jsonl(b"{}\n{\n", 10).unwrap_err().to_string();
        assert!(e.contains("line 2 is not valid JSON"), "{e}");
        let e = check_jsonl(b"{}\n{}\n{}", 2).unwrap_err().to_string();
        assert!(e.contains("--batch-max-file-lines"), "{e}");
    }

    #[test]
    fn pages_follow_the_cursor() {
        let all: Vec<(u64, String, u64)> = (1..=5).map(|i| (i, format!("x{i}"), i)).collect();
        let p = page(all.clone(), None, 2, true);
        assert_eq!((p.items, p.has_more), (vec![5, 4], true));
        let p = page(all.clone(), Some("x4"), 2, true);
        assert_eq!((p.items, p.has_more), (vec![3, 2], true));
        let p = page(all.clone(), Some("x2"), 2, true);
        assert_eq!((p.items, p.has_more), (vec![1], false));
        let p = page(all, Some("x2"), 5, false);
        assert_eq!((p.items, p.has_more), (vec![3, 4, 5], false));
    }
}
