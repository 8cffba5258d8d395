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

/// Longest config document name accepted on write. A name becomes a file name in the
/// sidecar's config directory (at most 255 bytes on Linux file systems); the margin
/// leaves room for what is built from it there (temporary and moved-aside names).
pub const MAX_CONFIG_NAME_LEN: usize = 200;

/// Longest file name the sidecar writes (`NAME_MAX` on Linux).
const MAX_FILE_NAME_LEN: usize = 255;

/// Config document names become file names in the sidecar's config dir, so no paths,
/// and they stay well under the file-name limit. Checked when a document is written.
pub fn validate_config_name(name: &str) -> Result<(), String> {
    validate_config_file_name(name)?;
    if name.len() > MAX_CONFIG_NAME_LEN {
        return Err(format!(
            "invalid config name: {} bytes, at most {MAX_CONFIG_NAME_LEN} allowed",
            name.len()
        ));
    }
    Ok(())
}

/// What the sidecar can write as a config file: a safe file name (letters, digits,
/// `.`, `_`, `-`; not `.` or `..`) of at most 255 bytes. Looser than
/// [`validate_config_name`] on length only, so a document stored before the write
/// limit was lowered still reaches its sidecars.
pub fn validate_config_file_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_FILE_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        let shown: String = name.chars().take(64).collect();
        let more = if shown.len() < name.len() { "…" } else { "" };
        Err(format!(
            "invalid config name {shown:?}{more}: use 1-{MAX_CONFIG_NAME_LEN} letters, digits, '.', '_' and '-' (a file name, no path)"
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
            assert!(validate_config_file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_names_over_200_bytes_are_refused_on_write_but_still_written_by_sidecars() {
        let limit = "n".repeat(MAX_CONFIG_NAME_LEN);
        assert!(validate_config_name(&limit).is_ok());
        let over = "n".repeat(MAX_CONFIG_NAME_LEN + 1);
        let err = validate_config_name(&over).unwrap_err();
        assert!(err.contains("201 bytes, at most 200"), "{err}");
        // Stored before the limit: the sidecar can still write it (255 is the file-name limit).
        assert!(validate_config_file_name(&"n".repeat(253)).is_ok());
        assert!(validate_config_file_name(&"n".repeat(256)).is_err());
    }
}
