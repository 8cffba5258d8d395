//! Strict JSON reading for policy documents: a key written twice is refused, because
//! JSON parsers disagree on which one wins and a reviewer reads the first one.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

/// The path (`routes[0].match.headers.x-canary`) of the first key that an object of
/// `bytes` holds twice, if any. Malformed JSON is `Err` with the parser's message.
pub(crate) fn duplicate_key(bytes: &[u8]) -> Result<Option<String>, serde_json::Error> {
    let found = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let walked = Walk {
        path: String::new(),
        found: &found,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match (walked, found.into_inner()) {
        (_, Some(path)) => Ok(Some(path)),
        (Err(e), None) => Err(e),
        (Ok(()), None) => Ok(None),
    }
}

struct Walk<'a> {
    path: String,
    found: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        while seq
            .next_element_seed(Walk {
                path: format!("{}[{i}]", self.path),
                found: self.found,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !seen.insert(key) {
                *self.found.borrow_mut() = Some(path);
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value_seed(Walk {
                path,
                found: self.found,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::duplicate_key;

    #[test]
    fn finds_a_key_written_twice_at_any_depth() {
        assert_eq!(duplicate_key(br#"{"a":1,"a":2}"#).unwrap().as_deref(), Some("a"));
        assert_eq!(
            duplicate_key(br#"{"routes":[{"name":"x"},{"name":"y","name":"z"}]}"#)
                .unwrap()
                .as_deref(),
            Some("routes[1].name")
        );
        assert_eq!(duplicate_key(br#"{"a":{"b":1},"c":[{"b":2}]}"#).unwrap(), None);
    }

    #[test]
    fn malformed_json_is_an_error_not_a_duplicate() {
        assert!(duplicate_key(br#"{"a":"#).is_err());
        assert!(duplicate_key(br#"{"a":1} trailing"#).is_err());
    }
}
