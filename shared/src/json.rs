//! Limits on the JSON that clients hand us to deliver to others.
//!
//! A message's `data` is passed through as raw JSON, never parsed into a
//! tree (serde_json reads a `RawValue` without recursion and without its
//! recursion limit of 128), and reaches every subscriber as is. A receiver's
//! parser may be recursive with a lower limit, or none (a stack overflow), so
//! a payload nested thousands deep would be a weapon against everyone on the
//! channel. Publishing refuses it instead, in one place for both paths.

/// Deepest nesting of arrays and objects accepted in a published `data`: a
/// scalar is depth 0, `[]` and `{}` depth 1, `[[1]]` depth 2. Half of
/// serde_json's default recursion limit, and far beyond any sensible message.
pub const MAX_JSON_DEPTH: usize = 64;

/// Whether `json` (already known to be valid JSON) nests arrays and objects
/// at most `max` deep. One pass over the bytes, no allocation, stopping at
/// the first level too deep; brackets inside strings do not count.
pub fn depth_within(json: &str, max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn counts_arrays_and_objects() {
        assert!(depth_within("1", 0));
        assert!(!depth_within("[]", 0));
        assert!(depth_within(r#"{"a":[{"b":[]}]}"#, 4));
        assert!(!depth_within(r#"{"a":[{"b":[]}]}"#, 3));
        assert!(depth_within(&nested(MAX_JSON_DEPTH), MAX_JSON_DEPTH));
        assert!(!depth_within(&nested(MAX_JSON_DEPTH + 1), MAX_JSON_DEPTH));
        // Siblings do not add up: depth is the deepest path.
        assert!(depth_within("[[1],[2],[3]]", 2));
    }

    #[test]
    fn brackets_in_strings_do_not_count() {
        assert!(depth_within(r#"["[[[[{{{{", "\"[[[", "\\"]"#, 1));
        assert!(!depth_within(r#"["\\", [[]]]"#, 2));
    }
}
