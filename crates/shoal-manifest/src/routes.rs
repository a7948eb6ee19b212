//! The `http` list of a function: methods, path templates, and duplicates within one
//! function. Duplicates across functions are checked by the caller, which sees them all.

use std::collections::BTreeMap;

use crate::tree::{Kind, Node};
use crate::validate::{describe, join, unknown_key, Source};
use crate::{HttpRoute, PayloadVersion, Result};

const ROUTE_KEYS: &[&str] = &["method", "path", "payload"];
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// What makes two routes the same: the method (`None` = any) and the path with parameter
/// names erased, since `/users/{id}` and `/users/{name}` match exactly the same requests.
pub(crate) type RouteKey = (Option<String>, String);

/// A route and where it was declared, for duplicate errors.
#[derive(Debug, Clone)]
pub(crate) struct RouteSite {
    pub(crate) key: RouteKey,
    /// `GET /users/{id}` as written (method upper-cased, `ANY` for any method).
    pub(crate) display: String,
    pub(crate) field: String,
    pub(crate) offset: usize,
}

pub(crate) fn http(
    src: &Source<'_>,
    field: &str,
    node: &Node,
    offset: usize,
) -> Result<(Vec<HttpRoute>, Vec<RouteSite>)> {
    let Kind::Array(items) = &node.kind else {
        return Err(src.error(
            offset,
            field,
            format!(
                "expected a list of routes like http = [{{ method = \"GET\", path = \"/hello\" }}], \
                 got {}",
                describe(node)
            ),
        ));
    };
    let mut routes = Vec::with_capacity(items.len());
    let mut sites: Vec<RouteSite> = Vec::with_capacity(items.len());
    let mut seen: BTreeMap<RouteKey, usize> = BTreeMap::new();
    for (index, item) in items.iter().enumerate() {
        let item_field = format!("{field}[{index}]");
        let item_offset = item.start().unwrap_or(offset);
        let (route, site) = route(src, &item_field, item, item_offset)?;
        if let Some(&first) = seen.get(&site.key) {
            return Err(src.error(
                site.offset,
                &site.field,
                format!(
                    "duplicate route {}: already declared as http[{first}] (line {}{}) of \
                     this function; remove one",
                    site.display,
                    src.line(sites[first].offset),
                    same_shape_note(&sites[first], &site)
                ),
            ));
        }
        seen.insert(site.key.clone(), index);
        routes.push(route);
        sites.push(site);
    }
    Ok((routes, sites))
}

/// When two clashing routes are spelled differently, says why they still clash.
pub(crate) fn same_shape_note(first: &RouteSite, second: &RouteSite) -> String {
    if first.display == second.display {
        String::new()
    } else {
        format!(", as {}; parameter names do not matter", first.display)
    }
}

fn route(
    src: &Source<'_>,
    field: &str,
    node: &Node,
    offset: usize,
) -> Result<(HttpRoute, RouteSite)> {
    let Kind::Table(entries) = &node.kind else {
        return Err(src.error(
            offset,
            field,
            format!(
                "expected a route like {{ method = \"GET\", path = \"/hello\" }}, got {}",
                describe(node)
            ),
        ));
    };
    let mut method = None;
    let mut path = None;
    let mut payload = PayloadVersion::default();
    for (key, value) in entries {
        let key_field = join(field, &key.name);
        let value_offset = value.start().unwrap_or(offset);
        match key.name.as_str() {
            "method" => method = parse_method(src, &key_field, value, value_offset)?,
            "path" => {
                let Kind::String(text) = &value.kind else {
                    return Err(src.error(
                        value_offset,
                        &key_field,
                        format!("expected a path like \"/hello\", got {}", describe(value)),
                    ));
                };
                let shape = path_shape(text)
                    .map_err(|problem| src.error(value_offset, &key_field, problem))?;
                path = Some((text.clone(), shape));
            }
            "payload" => {
                payload = match &value.kind {
                    Kind::String(text) if text == "1.0" => PayloadVersion::V1,
                    Kind::String(text) if text == "2.0" => PayloadVersion::V2,
                    _ => {
                        return Err(src.error(
                            value_offset,
                            &key_field,
                            format!(
                                "expected \"1.0\" (API Gateway's REST event) or \"2.0\" (the HTTP API's, the default), got {}",
                                describe(value)
                            ),
                        ))
                    }
                };
            }
            other => {
                let key_offset = key.start().unwrap_or(offset);
                return Err(unknown_key(src, key_offset, &key_field, other, ROUTE_KEYS));
            }
        }
    }
    let Some((path, shape)) = path else {
        return Err(src.error(offset, field, "route has no path; add path = \"/...\""));
    };
    let display = format!("{} {path}", method.as_deref().unwrap_or("ANY"));
    let site = RouteSite {
        key: (method.clone(), shape),
        display,
        field: field.to_owned(),
        offset,
    };
    Ok((
        HttpRoute {
            method,
            path,
            payload,
        },
        site,
    ))
}

/// `Ok(None)` means any method.
fn parse_method(
    src: &Source<'_>,
    field: &str,
    node: &Node,
    offset: usize,
) -> Result<Option<String>> {
    let Kind::String(text) = &node.kind else {
        return Err(src.error(
            offset,
            field,
            format!("expected a method like \"GET\", got {}", describe(node)),
        ));
    };
    let upper = text.to_ascii_uppercase();
    if upper == "ANY" || upper == "*" {
        return Ok(None);
    }
    if METHODS.contains(&upper.as_str()) {
        return Ok(Some(upper));
    }
    Err(src.error(
        offset,
        field,
        format!(
            "unknown HTTP method {text:?}; use one of {}, or \"ANY\" (or leave method out) \
             to accept every method",
            METHODS.join(", ")
        ),
    ))
}

/// Checks a path template and returns it with parameter names erased (`/users/{}`,
/// greedy `{+}`), or a message saying what is wrong with it.
fn path_shape(path: &str) -> Result<String, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("path {path:?} must start with \"/\""));
    };
    if rest.is_empty() {
        return Ok("/".to_owned());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let mut shape = String::new();
    let mut params: Vec<&str> = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        shape.push('/');
        if segment.is_empty() {
            return Err(format!(
                "path {path:?} has an empty segment; remove the doubled or trailing \"/\""
            ));
        }
        if let Some(inner) = segment.strip_prefix('{') {
            let Some(inner) = inner.strip_suffix('}') else {
                return Err(bad_param(path, segment));
            };
            let (name, greedy) = match inner.strip_suffix('+') {
                Some(name) => (name, true),
                None => (inner, false),
            };
            let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(bad_param(path, segment));
            }
            if greedy && i + 1 != segments.len() {
                return Err(format!(
                    "path {path:?}: the greedy parameter {segment:?} must be the last segment"
                ));
            }
            if params.contains(&name) {
                return Err(format!(
                    "path {path:?} uses the parameter {{{name}}} twice; give each a distinct name"
                ));
            }
            params.push(name);
            shape.push_str(if greedy { "{+}" } else { "{}" });
            continue;
        }
        if let Some(c) = segment.chars().find(|&c| !is_path_char(c)) {
            return Err(format!(
                "path {path:?} contains {c:?}, which is not allowed in a URL path; use letters, \
                 digits, \"-\", \"_\", \".\", \"~\" or a {{param}} segment"
            ));
        }
        shape.push_str(segment);
    }
    Ok(shape)
}

fn bad_param(path: &str, segment: &str) -> String {
    format!(
        "path {path:?}: segment {segment:?} is not valid; a parameter is a whole segment \
         like \"{{id}}\" or a final \"{{proxy+}}\", named with letters, digits and \"_\""
    )
}

/// RFC 3986 `pchar` without percent-escapes.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@".contains(c)
}

#[cfg(test)]
mod tests {
    use super::path_shape;

    #[test]
    fn path_shapes_erase_parameter_names() {
        assert_eq!(path_shape("/").unwrap(), "/");
        assert_eq!(path_shape("/users/{id}").unwrap(), "/users/{}");
        assert_eq!(path_shape("/files/{proxy+}").unwrap(), "/files/{+}");
        assert_eq!(
            path_shape("/a/{x}/b").unwrap(),
            path_shape("/a/{y}/b").unwrap()
        );
    }

    #[test]
    fn bad_paths_are_rejected() {
        for bad in [
            "hello",
            "",
            "/a//b",
            "/a/",
            "/{id",
            "/x{id}",
            "/{1id}",
            "/{proxy+}/more",
            "/{a}/{a}",
            "/a b",
            "/a?b",
        ] {
            assert!(path_shape(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
