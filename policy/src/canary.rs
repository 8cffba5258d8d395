//! Canary weights as edits of a RoutingPolicy, shared by `outriderctl canary` and the
//! control plane's automated rollouts so that both read and write the same shape.
//!
//! The *managed route* is the last catch-all route (no header match, path prefix
//! absent or `/`); a missing one is appended as `default`. Its first backend is the
//! stable subset and its second, when present, the canary. Header-matched routes
//! (e.g. pinning testers to v2) are left alone.

use crate::{Backend, PolicyError, Route, RouteMatch, RoutingPolicy, Validate};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanaryError {
    #[error("weight {0} is out of range: it must be between 0 and 100")]
    Weight(u32),
    #[error("the canary subset and the stable subset are both {0:?}")]
    SameSubset(String),
    #[error("invalid subset name {0:?}")]
    Subset(String),
    #[error("no canary to act on: the routing policy sends all traffic to one subset")]
    NoCanary,
    #[error("the resulting policy is invalid: {0}")]
    Invalid(String),
}

/// Stable and canary of the managed route, as `(subset, weight)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryWeights {
    pub stable: (String, u32),
    pub canary: Option<(String, u32)>,
}

fn is_catch_all(m: &RouteMatch) -> bool {
    m.headers.is_empty() && m.path_prefix.as_deref().is_none_or(|p| p == "/")
}

fn managed(p: &RoutingPolicy) -> Option<usize> {
    p.routes.iter().rposition(|r| is_catch_all(&r.matches))
}

/// The managed route's weights, if the policy has one.
pub fn weights(p: &RoutingPolicy) -> Option<CanaryWeights> {
    let r = &p.routes[managed(p)?];
    let stable = r.backends.first()?;
    Some(CanaryWeights {
        stable: (stable.subset.clone(), stable.weight),
        canary: r.backends.get(1).map(|b| (b.subset.clone(), b.weight)),
    })
}

fn with_backends(p: Option<&RoutingPolicy>, backends: Vec<Backend>) -> Result<RoutingPolicy, CanaryError> {
    let mut p = p.cloned().unwrap_or(RoutingPolicy { routes: Vec::new() });
    match managed(&p) {
        Some(i) => p.routes[i].backends = backends,
        None => p.routes.push(Route {
            name: unique_name(&p, "default"),
            matches: RouteMatch {
                path_prefix: Some("/".into()),
                headers: Default::default(),
            },
            backends,
            timeout: None,
            retries: None,
        }),
    }
    let mut errors = Vec::new();
    p.validate(&mut errors);
    if errors.is_empty() {
        Ok(p)
    } else {
        Err(CanaryError::Invalid(PolicyError::Invalid(errors).to_string()))
    }
}

fn unique_name(p: &RoutingPolicy, base: &str) -> String {
    let mut name = base.to_owned();
    let mut n = 1;
    while p.routes.iter().any(|r| r.name == name) {
        n += 1;
        name = format!("{base}-{n}");
    }
    name
}

/// Sends `weight`% to `subset` and the rest to the stable subset: `stable` if given,
/// else the managed route's current stable, else `v1`.
pub fn set_weight(
    p: Option<&RoutingPolicy>,
    subset: &str,
    weight: u32,
    stable: Option<&str>,
) -> Result<RoutingPolicy, CanaryError> {
    if weight > 100 {
        return Err(CanaryError::Weight(weight));
    }
    for s in [Some(subset), stable].into_iter().flatten() {
        if s.trim().is_empty() || s.len() > 63 || s.chars().any(|c| c.is_whitespace()) {
            return Err(CanaryError::Subset(s.to_owned()));
        }
    }
    let current = p.and_then(weights).map(|w| w.stable.0);
    let stable = match (stable, current) {
        (Some(s), _) => s.to_owned(),
        (None, Some(s)) if s != subset => s,
        _ => "v1".to_owned(),
    };
    if stable == subset {
        return Err(CanaryError::SameSubset(stable));
    }
    with_backends(
        p,
        vec![
            Backend {
                subset: stable,
                weight: 100 - weight,
            },
            Backend {
                subset: subset.to_owned(),
                weight,
            },
        ],
    )
}

/// The canary becomes the stable subset with 100% of the traffic.
pub fn promote(p: Option<&RoutingPolicy>) -> Result<RoutingPolicy, CanaryError> {
    let canary = p
        .and_then(weights)
        .and_then(|w| w.canary)
        .ok_or(CanaryError::NoCanary)?;
    with_backends(
        p,
        vec![Backend {
            subset: canary.0,
            weight: 100,
        }],
    )
}

/// 100% back to the stable subset, whatever the state (already aborted, promoted,
/// half way): the stable is the managed route's first backend, or `stable`/`v1`
/// when there is no policy at all.
pub fn abort(p: Option<&RoutingPolicy>, stable: Option<&str>) -> Result<RoutingPolicy, CanaryError> {
    let stable = stable
        .map(str::to_owned)
        .or_else(|| p.and_then(weights).map(|w| w.stable.0))
        .unwrap_or_else(|| "v1".into());
    with_backends(
        p,
        vec![Backend {
            subset: stable,
            weight: 100,
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_document;

    fn pinned() -> RoutingPolicy {
        parse_document(
            br#"{"routes":[{"name":"beta","match":{"headers":{"x-canary":"always"}},
                "backends":[{"subset":"v2","weight":100}]},
              {"name":"default","match":{"pathPrefix":"/"},"backends":[{"subset":"v1","weight":100}],"timeout":"2s"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn set_promote_abort_edit_only_the_managed_route() {
        let p = set_weight(Some(&pinned()), "v2", 30, None).unwrap();
        assert_eq!(
            weights(&p).unwrap(),
            CanaryWeights {
                stable: ("v1".into(), 70),
                canary: Some(("v2".into(), 30))
            }
        );
        assert_eq!(p.routes[0], pinned().routes[0], "header routes are kept");
        assert_eq!(p.routes[1].timeout, pinned().routes[1].timeout);
        let promoted = promote(Some(&p)).unwrap();
        assert_eq!(weights(&promoted).unwrap().stable, ("v2".into(), 100));
        let aborted = abort(Some(&p), None).unwrap();
        assert_eq!(weights(&aborted).unwrap().stable, ("v1".into(), 100));
        // Abort twice, or with nothing running: still 100% stable.
        assert_eq!(abort(Some(&aborted), None).unwrap(), aborted);
    }

    #[test]
    fn a_missing_policy_gets_a_default_route() {
        let p = set_weight(None, "v2", 10, Some("v1")).unwrap();
        assert_eq!(p.routes.len(), 1);
        assert_eq!(p.routes[0].name, "default");
        assert_eq!(weights(&p).unwrap().canary, Some(("v2".into(), 10)));
    }

    #[test]
    fn bad_weights_and_subsets_are_refused() {
        assert_eq!(set_weight(None, "v2", 150, None), Err(CanaryError::Weight(150)));
        assert_eq!(
            set_weight(None, "v1", 10, Some("v1")),
            Err(CanaryError::SameSubset("v1".into()))
        );
        assert_eq!(promote(Some(&pinned())), Err(CanaryError::NoCanary));
    }
}
