//! A compiled `match` (path prefix and exact header values), shared by rate-limit rules
//! and routes so both select requests the same way.

use http::{HeaderMap, HeaderName};
use outrider_policy::RouteMatch;

#[derive(Debug, Default)]
pub struct RequestMatcher {
    path_prefix: Option<Box<str>>,
    headers: Box<[(HeaderName, Box<[u8]>)]>,
}

impl RequestMatcher {
    pub fn compile(m: &RouteMatch) -> Self {
        let headers = m
            .headers
            .iter()
            .map(|(name, value)| {
                // Validation guarantees the name parses. Should one not, the match must
                // never succeed: keep an impossible requirement rather than drop it.
                let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .unwrap_or_else(|_| HeaderName::from_static("x-outrider-invalid-header-name"));
                (name, value.as_bytes().into())
            })
            .collect();
        Self {
            path_prefix: m.path_prefix.as_deref().map(Into::into),
            headers,
        }
    }

    /// True when the path has the prefix and every header has its value (among
    /// repeated fields, any one will do). No allocation.
    pub fn matches(&self, path: &str, headers: &HeaderMap) -> bool {
        if let Some(prefix) = &self.path_prefix {
            if !path.starts_with(&**prefix) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, want)| headers.get_all(name).iter().any(|v| v.as_bytes() == &**want))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_every_header_must_match() {
        let m = RequestMatcher::compile(&RouteMatch {
            path_prefix: Some("/api".into()),
            headers: [("X-Canary".to_owned(), "yes".to_owned())].into(),
        });
        let mut h = HeaderMap::new();
        assert!(!m.matches("/api/x", &h));
        h.append("x-canary", "no".parse().unwrap());
        h.append("x-canary", "yes".parse().unwrap());
        assert!(m.matches("/api/x", &h));
        assert!(!m.matches("/web", &h));
        assert!(RequestMatcher::default().matches("/anything", &HeaderMap::new()));
    }
}
