use crate::FieldError;
use std::collections::HashSet;

/// Longest route or rule name. Names travel in response headers (`RateLimit-Policy`)
/// and metric labels on every request, so they stay short.
pub const MAX_ITEM_NAME_LEN: usize = 63;

/// Checks the name of a route or rule (`what`): present, unique within its document,
/// short, and printable ASCII (what a header value carries; quotes are escaped there).
pub(crate) fn check_item_name<'a>(
    name: &'a str,
    field: String,
    what: &str,
    seen: &mut HashSet<&'a str>,
    errors: &mut Vec<FieldError>,
) {
    if name.trim().is_empty() {
        errors.push(FieldError::new(field, "must not be empty"));
    } else if name.len() > MAX_ITEM_NAME_LEN {
        errors.push(FieldError::new(
            field,
            format!("must be at most {MAX_ITEM_NAME_LEN} bytes long"),
        ));
    } else if !name.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        errors.push(FieldError::new(field, "must be printable ASCII"));
    } else if !seen.insert(name) {
        errors.push(FieldError::new(field, format!("duplicate {what} name {name:?}")));
    }
}

/// Service names are DNS labels (RFC 1123): what Kubernetes allows for a Service.
pub fn validate_service_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid service name {name:?}: use 1-63 lowercase letters, digits and '-', not starting or ending with '-'"
        ))
    }
}

/// Config document names become file names in the sidecar's config dir, so no paths.
pub fn validate_config_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid config name {name:?}: use letters, digits, '.', '_' and '-' (a file name, no path)"
        ))
    }
}

/// Header names as they appear on the wire, lower-cased (RFC 9110 token).
pub(crate) fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_dns_labels() {
        assert!(validate_service_name("web-2").is_ok());
        for bad in ["", "Web", "-web", "web-", "a/b", &"x".repeat(64)] {
            assert!(validate_service_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn item_names_are_short_unique_and_header_safe() {
        let mut seen = HashSet::new();
        let mut errors = Vec::new();
        let long = "x".repeat(MAX_ITEM_NAME_LEN + 1);
        for (i, name) in ["per client", "per client", "", "caf\u{e9}", "tab\there", long.as_str()]
            .iter()
            .enumerate()
        {
            check_item_name(name, format!("rules[{i}].name"), "rule", &mut seen, &mut errors);
        }
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "rules[1].name",
                "rules[2].name",
                "rules[3].name",
                "rules[4].name",
                "rules[5].name"
            ]
        );
    }

    #[test]
    fn config_names_cannot_escape_the_config_dir() {
        assert!(validate_config_name("app.yaml").is_ok());
        for bad in ["", ".", "..", "../x", "a/b", "a b"] {
            assert!(validate_config_name(bad).is_err(), "{bad}");
        }
    }
}
