//! The one key codec: every key in every tree is built here.
//!
//! Keys are tuples of parts joined by [`SEP`] (`0xFF`, a byte that never
//! occurs in UTF-8). Integers are fixed-width big-endian, so byte order is
//! numeric order and a prefix scan returns entries in sequence.

/// Separator between key parts.
pub const SEP: u8 = 0xFF;

/// One part of a composite key.
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    Str(&'a str),
    Bytes(&'a [u8]),
    U64(u64),
}

impl<'a> From<&'a str> for Part<'a> {
    fn from(s: &'a str) -> Self {
        Part::Str(s)
    }
}

impl<'a> From<&'a String> for Part<'a> {
    fn from(s: &'a String) -> Self {
        Part::Str(s.as_str())
    }
}

impl From<u64> for Part<'_> {
    fn from(n: u64) -> Self {
        Part::U64(n)
    }
}

/// Joins parts with [`SEP`].
pub fn key(parts: &[Part<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(SEP);
        }
        match part {
            Part::Str(s) => out.extend_from_slice(s.as_bytes()),
            Part::Bytes(b) => out.extend_from_slice(b),
            Part::U64(n) => out.extend_from_slice(&n.to_be_bytes()),
        }
    }
    out
}

/// A prefix that selects every key whose leading parts equal `parts`
/// (the parts followed by a separator).
pub fn prefix(parts: &[Part<'_>]) -> Vec<u8> {
    let mut out = key(parts);
    out.push(SEP);
    out
}

/// Splits a key made of string parts back into its parts.
pub fn split_str(key: &[u8]) -> Option<Vec<&str>> {
    key.split(|b| *b == SEP).map(|p| std::str::from_utf8(p).ok()).collect()
}

/// Encodes a `u64` as 8 big-endian bytes.
pub fn u64_bytes(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Decodes 8 big-endian bytes.
pub fn u64_from(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The last 8 bytes of a key as a big-endian `u64` (a trailing counter).
pub fn trailing_u64(key: &[u8]) -> Option<u64> {
    key.len().checked_sub(8).and_then(|start| u64_from(&key[start..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_with_separator() {
        assert_eq!(key(&["a".into(), "bc".into()]), b"a\xffbc".to_vec());
        assert_eq!(key(&["only".into()]), b"only".to_vec());
        assert_eq!(prefix(&["a".into()]), b"a\xff".to_vec());
    }

    #[test]
    fn integers_are_big_endian_and_sort_numerically() {
        let a = key(&["r".into(), 2u64.into()]);
        let b = key(&["r".into(), 256u64.into()]);
        assert!(a < b);
        assert_eq!(trailing_u64(&b), Some(256));
        assert_eq!(u64_from(&u64_bytes(u64::MAX)), Some(u64::MAX));
        assert_eq!(u64_from(&[1, 2, 3]), None);
        assert_eq!(trailing_u64(&[1]), None);
    }

    #[test]
    fn prefix_does_not_match_longer_first_part() {
        let p = prefix(&["@al:x".into()]);
        let other = key(&["@al:xy".into(), "D".into()]);
        let mine = key(&["@al:x".into(), "D".into()]);
        assert!(!other.starts_with(&p));
        assert!(mine.starts_with(&p));
    }

    #[test]
    fn split_round_trips() {
        let k = key(&["@u:hs".into(), "DEV".into()]);
        assert_eq!(split_str(&k), Some(vec!["@u:hs", "DEV"]));
        assert_eq!(split_str(&[0xfe, 0xff, b'a']), None);
    }
}
