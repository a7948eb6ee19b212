//! The route table of one gateway: which function serves a method and path, following API
//! Gateway HTTP API matching rules.
//!
//! Routes are `METHOD /path` or `ANY /path`, with literal segments, `{param}` (one
//! segment) and a final greedy `{name+}` (one or more segments). The most specific route
//! wins: comparing segment by segment from the left, a literal beats `{param}`, which
//! beats `{proxy+}`; for the same path a method-specific route beats `ANY`. Two routes
//! with the same method and the same path shape (parameter names aside) conflict.
//!
//! Trailing slash: API Gateway HTTP APIs refuse routes ending in `/` and route a request
//! for `/a/` as if it were `/a`, so the table does the same (the event's `rawPath` keeps
//! the slash). This module only matches; it does not read requests or build events.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::percent;
use crate::request::{PayloadFormat, RouteMatch};

/// A route that cannot be added to the table.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route `{route_key}` for function `{target}` conflicts with `{existing_route_key}` of function `{existing_target}`; give one of them a different method or path")]
    Conflict {
        route_key: String,
        target: String,
        existing_route_key: String,
        existing_target: String,
    },
    #[error("route path {path:?} for function `{target}` is invalid: {reason}")]
    InvalidPath {
        path: String,
        target: String,
        reason: &'static str,
    },
    #[error("route method {method:?} for function `{target}` is invalid; use an HTTP method such as GET, or ANY")]
    InvalidMethod { method: String, target: String },
}

/// Route table for one gateway: the routes of many functions.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    /// Kept sorted by precedence so that the first route that matches is the best one.
    routes: Vec<Route>,
}

#[derive(Debug, Clone)]
struct Route {
    /// Upper-case; `None` is `ANY`.
    method: Option<String>,
    segments: Vec<Segment>,
    route_key: String,
    target: String,
    payload: PayloadFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Greedy(String),
}

impl Segment {
    /// Lower is more specific.
    fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) => 0,
            Segment::Param(_) => 1,
            Segment::Greedy(_) => 2,
        }
    }

    /// Same shape: parameter names do not tell two routes apart for matching.
    fn same_shape(&self, other: &Segment) -> bool {
        match (self, other) {
            (Segment::Literal(a), Segment::Literal(b)) => a == b,
            _ => self.rank() == other.rank(),
        }
    }
}

impl Route {
    fn precedence(&self) -> (Vec<u8>, bool) {
        (
            self.segments.iter().map(Segment::rank).collect(),
            self.method.is_none(),
        )
    }

    fn same_shape(&self, other: &Route) -> bool {
        self.method == other.method
            && self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| a.same_shape(b))
    }

    /// Matches `raw` (the path's raw segments) and returns the decoded parameters.
    fn matches(&self, raw: &[&str], decoded: &[Cow<'_, str>]) -> Option<BTreeMap<String, String>> {
        let mut params = BTreeMap::new();
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Literal(lit) => {
                    if decoded.get(i)? != lit {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    if raw.get(i)?.is_empty() {
                        return None;
                    }
                    params.insert(name.clone(), decoded[i].clone().into_owned());
                }
                Segment::Greedy(name) => {
                    let rest = raw.get(i..)?.join("/");
                    if rest.is_empty() {
                        return None;
                    }
                    params.insert(name.clone(), percent::decode(&rest, false).into_owned());
                    return Some(params);
                }
            }
        }
        (self.segments.len() == raw.len()).then_some(params)
    }
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route; `method` `None` (or `"ANY"`) matches every method not routed more
    /// specifically. A route with the same method and path shape as an existing one is a
    /// [`RouteError::Conflict`], even for the same target: redeploys remove a function's
    /// routes first with [`RouteTable::remove_target`].
    pub fn insert(
        &mut self,
        method: Option<&str>,
        path: &str,
        target: String,
    ) -> crate::Result<()> {
        self.insert_with_payload(method, path, target, PayloadFormat::V2)
    }

    /// [`RouteTable::insert`], for a route whose function gets `payload`'s event.
    pub fn insert_with_payload(
        &mut self,
        method: Option<&str>,
        path: &str,
        target: String,
        payload: PayloadFormat,
    ) -> crate::Result<()> {
        let method = match method {
            None => None,
            Some(m) if m.eq_ignore_ascii_case("ANY") => None,
            Some(m) if is_token(m) => Some(m.to_ascii_uppercase()),
            Some(m) => {
                return Err(RouteError::InvalidMethod {
                    method: m.into(),
                    target,
                })
            }
        };
        let segments = match parse_path(path) {
            Ok(segments) => segments,
            Err(reason) => {
                return Err(RouteError::InvalidPath {
                    path: path.into(),
                    target,
                    reason,
                })
            }
        };
        let route_key = format!("{} {path}", method.as_deref().unwrap_or("ANY"));
        let route = Route {
            method,
            segments,
            route_key,
            target,
            payload,
        };
        if let Some(existing) = self.routes.iter().find(|r| r.same_shape(&route)) {
            return Err(RouteError::Conflict {
                route_key: route.route_key,
                target: route.target,
                existing_route_key: existing.route_key.clone(),
                existing_target: existing.target.clone(),
            });
        }
        let key = route.precedence();
        let at = self.routes.partition_point(|r| r.precedence() <= key);
        self.routes.insert(at, route);
        Ok(())
    }

    /// Removes every route of `target`.
    pub fn remove_target(&mut self, target: &str) {
        self.routes.retain(|r| r.target != target);
    }

    /// The function serving `method` `path` (raw, undecoded, without the query string),
    /// and the match to report in its event.
    pub fn lookup(&self, method: &str, path: &str) -> Option<(&str, RouteMatch)> {
        let rest = path.strip_prefix('/')?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let raw: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let decoded: Vec<Cow<'_, str>> = raw.iter().map(|s| percent::decode(s, false)).collect();
        self.routes
            .iter()
            .filter(|r| r.method.is_none() || r.method.as_deref() == Some(method))
            .find_map(|r| {
                let path_params = r.matches(&raw, &decoded)?;
                let m = RouteMatch {
                    route_key: r.route_key.clone(),
                    path_params,
                    stage: "$default".into(),
                    payload: r.payload,
                };
                Some((r.target.as_str(), m))
            })
    }
}

fn parse_path(path: &str) -> Result<Vec<Segment>, &'static str> {
    let rest = path.strip_prefix('/').ok_or("it must start with `/`")?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    if rest.ends_with('/') {
        return Err("it must not end with `/` (API Gateway routes `/a/` to `/a` anyway)");
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err("it has an empty segment (`//`)");
        }
        if part.contains(['?', '#']) {
            return Err("it must not contain `?` or `#`; routes match the path only");
        }
        let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(inner) => match inner.strip_suffix('+') {
                Some(_) if i + 1 != parts.len() => {
                    return Err("a greedy `{name+}` parameter must be the last segment");
                }
                Some(name) => Segment::Greedy(param_name(name)?),
                None => Segment::Param(param_name(inner)?),
            },
            None if part.contains(['{', '}']) => {
                return Err("a parameter must be a whole segment, like `/items/{id}`");
            }
            None => Segment::Literal(percent::decode(part, false).into_owned()),
        };
        segments.push(segment);
    }
    let mut names: Vec<&str> = segments
        .iter()
        .filter_map(|s| match s {
            Segment::Param(n) | Segment::Greedy(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
        .collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err("a parameter name is used twice");
    }
    Ok(segments)
}

fn param_name(name: &str) -> Result<String, &'static str> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        Ok(name.into())
    } else {
        Err("a parameter name must be non-empty letters, digits, `_`, `-` or `.`")
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests;
