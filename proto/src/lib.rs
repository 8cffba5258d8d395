//! Wire types of the Outrider control stream, generated from `outrider/v1/*.proto`.
//!
//! Only generated code (and the codec it uses) lives here; conversion to domain types happens at the edges
//! (control plane and sidecar), validated once with `outrider-policy`.

pub mod codec;

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("outrider.v1");
}

/// A secret shows its name, size and revision, never its value.
impl std::fmt::Debug for v1::Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("size", &self.value.len())
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_secret_debugs_without_its_value() {
        let s = super::v1::Secret {
            name: "db".into(),
            value: b"hunter2".to_vec(),
            revision: 3,
        };
        let shown = format!(
            "{s:?} {:?}",
            super::v1::Snapshot {
                secrets: vec![s.clone()],
                ..Default::default()
            }
        );
        assert!(!shown.contains("hunter2") && !shown.contains("104, 117"), "{shown}");
        assert!(shown.contains("size: 7"), "{shown}");
    }
}
