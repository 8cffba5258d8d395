//! A tiny writer for the Prometheus text exposition format (version 0.0.4), for
//! components whose counters are plain atomics rather than a metrics registry.
//!
//! It writes `# HELP`/`# TYPE` once per family and samples with escaped label values;
//! it keeps no state, so rendering stays a walk over the caller's own counters.

use std::fmt::{Display, Write as _};

/// The metric type named in `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Appends exposition text to a `String` (writing to a `String` cannot fail, so
/// nothing here returns an error).
pub struct Writer<'a> {
    out: &'a mut String,
}

impl<'a> Writer<'a> {
    pub fn new(out: &'a mut String) -> Self {
        Self { out }
    }

    /// `# HELP name help` and `# TYPE name kind`; `help` is escaped.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self
    }

    /// `name{k="v",…} value`; label values are escaped (`\\`, `\"`, `\n`).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// A family with one unlabelled sample: the common case of a single counter or gauge.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples_render_in_the_text_format() {
        let mut out = String::new();
        Writer::new(&mut out)
            .single("up_total", Kind::Counter, "Times up.", 3)
            .family("req_total", Kind::Counter, "Requests.")
            .sample("req_total", &[("class", "2xx"), ("path", "/a")], 7);
        assert_eq!(
            out,
            "# HELP up_total Times up.\n# TYPE up_total counter\nup_total 3\n\
             # HELP req_total Requests.\n# TYPE req_total counter\n\
             req_total{class=\"2xx\",path=\"/a\"} 7\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = String::new();
        Writer::new(&mut out)
            .family("m", Kind::Gauge, "line\nbreak")
            .sample("m", &[("v", "a\"b\\c\nd")], 1.5);
        assert_eq!(
            out,
            "# HELP m line\\nbreak\n# TYPE m gauge\nm{v=\"a\\\"b\\\\c\\nd\"} 1.5\n"
        );
    }
}
