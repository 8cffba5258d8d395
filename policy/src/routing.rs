use crate::duration::MAX_TIMEOUT;
use crate::names::check_item_name;
use crate::{Duration, FieldError, RouteMatch, Validate};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// RoutingPolicy (`docs/reference.md`): ordered routes applied in the *caller's* sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoutingPolicy {
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(default, rename = "match", skip_serializing_if = "RouteMatch::is_empty")]
    pub matches: RouteMatch,
    pub backends: Vec<Backend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    pub subset: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RetryOn {
    #[serde(rename = "5xx")]
    ServerError,
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    #[serde(rename = "reset")]
    Reset,
}

impl Validate for RoutingPolicy {
    fn validate(&self, errors: &mut Vec<FieldError>) {
        let mut names = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            check_item_name(&r.name, format!("{at}.name"), "route", &mut names, errors);
            r.matches.validate(&format!("{at}.match"), errors);
            if r.backends.is_empty() {
                errors.push(FieldError::new(format!("{at}.backends"), "needs at least one backend"));
            }
            let mut subsets = HashSet::new();
            for (j, b) in r.backends.iter().enumerate() {
                if b.subset.trim().is_empty() {
                    errors.push(FieldError::new(
                        format!("{at}.backends[{j}].subset"),
                        "must not be empty",
                    ));
                } else if !subsets.insert(b.subset.as_str()) {
                    errors.push(FieldError::new(
                        format!("{at}.backends[{j}].subset"),
                        "subset listed twice",
                    ));
                }
                if b.weight > 100 {
                    errors.push(FieldError::new(
                        format!("{at}.backends[{j}].weight"),
                        "must be between 0 and 100",
                    ));
                }
            }
            // Weights are percentages: a route whose weights add up to anything else
            // would send a share nobody wrote down.
            let total: u64 = r.backends.iter().map(|b| u64::from(b.weight)).sum();
            if !r.backends.is_empty() && r.backends.iter().all(|b| b.weight <= 100) && total != 100 {
                errors.push(FieldError::new(
                    format!("{at}.backends"),
                    format!("weights must add up to 100 (they add up to {total})"),
                ));
            }
            if let Some(t) = r.timeout {
                t.check(format!("{at}.timeout"), MAX_TIMEOUT, errors);
            }
            if let Some(rt) = &r.retries {
                if rt.attempts > 10 {
                    errors.push(FieldError::new(format!("{at}.retries.attempts"), "must be at most 10"));
                }
                if let Some(t) = rt.per_try_timeout {
                    t.check(format!("{at}.retries.perTryTimeout"), MAX_TIMEOUT, errors);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{parse_document, PolicyError, RoutingPolicy};

    #[test]
    fn accepts_the_design_example() {
        let p: RoutingPolicy = parse_document(
            br#"{"routes": [
              {"name": "beta", "match": {"pathPrefix": "/", "headers": {"x-canary": "always"}},
               "backends": [{"subset": "v2", "weight": 100}]},
              {"name": "default", "match": {"pathPrefix": "/"},
               "backends": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}],
               "timeout": "2s",
               "retries": {"attempts": 2, "perTryTimeout": "500ms", "on": ["5xx", "connect-failure"]}}]}"#,
        )
        .unwrap();
        assert_eq!(p.routes[1].timeout.unwrap().0.as_millis(), 2000);
    }

    #[test]
    fn weight_over_100_is_named() {
        let err =
            parse_document::<RoutingPolicy>(br#"{"routes":[{"name":"d","backends":[{"subset":"v2","weight":150}]}]}"#)
                .unwrap_err();
        let PolicyError::Invalid(e) = err else { panic!() };
        assert_eq!(e[0].field, "routes[0].backends[0].weight");
    }

    fn fields(json: &str) -> Vec<String> {
        match parse_document::<RoutingPolicy>(json.as_bytes()) {
            Err(PolicyError::Invalid(e)) => e.into_iter().map(|e| e.field).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn weights_must_add_up_to_100() {
        assert_eq!(
            fields(r#"{"routes":[{"name":"d","backends":[{"subset":"v1","weight":60},{"subset":"v2","weight":60}]}]}"#),
            ["routes[0].backends"]
        );
        assert_eq!(
            fields(r#"{"routes":[{"name":"d","backends":[{"subset":"v1","weight":0}]}]}"#),
            ["routes[0].backends"]
        );
    }

    #[test]
    fn timeouts_past_an_hour_are_refused_before_they_overflow_a_clock() {
        assert_eq!(
            fields(
                r#"{"routes":[{"name":"d","backends":[{"subset":"v1","weight":100}],"timeout":"18446744073709551615s",
                   "retries":{"attempts":1,"perTryTimeout":"2h"}}]}"#
            ),
            ["routes[0].timeout", "routes[0].retries.perTryTimeout"]
        );
    }

    #[test]
    fn a_key_written_twice_is_named() {
        assert_eq!(
            fields(r#"{"routes":[{"name":"d","name":"e","backends":[{"subset":"v1","weight":100}]}]}"#),
            ["routes[0].name"]
        );
    }
}
