//! Unit tests of route matching: precedence, conflicts, validation and decoding.

use super::*;

fn table(routes: &[(Option<&str>, &str, &str)]) -> RouteTable {
    let mut t = RouteTable::new();
    for (method, path, target) in routes {
        t.insert(*method, path, (*target).to_owned()).unwrap();
    }
    t
}

/// (target, route key) or None.
fn hit(t: &RouteTable, method: &str, path: &str) -> Option<(String, String)> {
    t.lookup(method, path)
        .map(|(target, m)| (target.to_owned(), m.route_key))
}

fn params(t: &RouteTable, method: &str, path: &str) -> Vec<(String, String)> {
    t.lookup(method, path)
        .expect("route matches")
        .1
        .path_params
        .into_iter()
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn literal_beats_param_beats_greedy_regardless_of_insert_order() {
    let routes = [
        (Some("GET"), "/items/{proxy+}", "greedy"),
        (Some("GET"), "/items/{id}", "param"),
        (Some("GET"), "/items/special", "literal"),
    ];
    for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2]] {
        let t = table(&order.map(|i| routes[i]));
        assert_eq!(hit(&t, "GET", "/items/special").unwrap().0, "literal");
        assert_eq!(hit(&t, "GET", "/items/42").unwrap().0, "param");
        assert_eq!(hit(&t, "GET", "/items/42/parts").unwrap().0, "greedy");
        assert_eq!(
            hit(&t, "GET", "/items"),
            None,
            "{{proxy+}} needs at least one segment"
        );
    }
}

#[test]
fn leftmost_literal_wins_between_parameterised_routes() {
    let t = table(&[
        (None, "/a/{x}/c", "param-first"),
        (None, "/a/b/{y}", "literal-first"),
    ]);
    assert_eq!(hit(&t, "GET", "/a/b/c").unwrap().0, "literal-first");
    assert_eq!(hit(&t, "GET", "/a/z/c").unwrap().0, "param-first");
}

#[test]
fn method_specific_beats_any_for_the_same_path() {
    let t = table(&[(None, "/x", "any"), (Some("post"), "/x", "post")]);
    assert_eq!(
        hit(&t, "POST", "/x"),
        Some(("post".into(), "POST /x".into()))
    );
    assert_eq!(hit(&t, "GET", "/x"), Some(("any".into(), "ANY /x".into())));
    assert_eq!(hit(&t, "DELETE", "/x").unwrap().0, "any");
}

#[test]
fn path_specificity_comes_before_method() {
    let t = table(&[
        (Some("GET"), "/a/{x}", "get-param"),
        (None, "/a/b", "any-literal"),
    ]);
    assert_eq!(hit(&t, "GET", "/a/b").unwrap().0, "any-literal");
    assert_eq!(hit(&t, "GET", "/a/c").unwrap().0, "get-param");
    assert_eq!(hit(&t, "POST", "/a/c"), None);
}

#[test]
fn methods_are_case_sensitive_on_requests() {
    let t = table(&[(Some("GET"), "/x", "f")]);
    assert!(hit(&t, "GET", "/x").is_some());
    assert_eq!(hit(&t, "get", "/x"), None);
}

#[test]
fn root_route_matches_only_root() {
    let t = table(&[
        (Some("GET"), "/", "root"),
        (Some("GET"), "/{proxy+}", "rest"),
    ]);
    assert_eq!(hit(&t, "GET", "/"), Some(("root".into(), "GET /".into())));
    assert_eq!(hit(&t, "GET", "/a").unwrap().0, "rest");
    assert_eq!(
        params(&t, "GET", "/a/b%20c/d"),
        pairs(&[("proxy", "a/b c/d")])
    );
}

#[test]
fn trailing_slash_is_ignored_like_api_gateway() {
    let t = table(&[
        (Some("GET"), "/a", "a"),
        (Some("GET"), "/items/{id}", "item"),
    ]);
    assert_eq!(hit(&t, "GET", "/a/").unwrap().0, "a");
    assert_eq!(params(&t, "GET", "/items/7/"), pairs(&[("id", "7")]));
    // Only one slash is forgiven, and an empty segment never fills a parameter.
    assert_eq!(hit(&t, "GET", "/a//"), None);
    assert_eq!(hit(&t, "GET", "/items//"), None);
    assert_eq!(hit(&t, "GET", "/items/"), None);
}

#[test]
fn path_params_are_decoded_and_plus_stays_literal() {
    let t = table(&[(Some("GET"), "/users/{user}/files/{name}", "f")]);
    assert_eq!(
        params(&t, "GET", "/users/j%C3%B6rg/files/a+b%2Fc%25"),
        pairs(&[("name", "a+b/c%"), ("user", "jörg")])
    );
    // An encoded slash is part of one segment, not a separator.
    assert_eq!(hit(&t, "GET", "/users/a%2Fb/files/x").unwrap().0, "f");
}

#[test]
fn literal_segments_compare_decoded() {
    let t = table(&[(Some("GET"), "/hello world", "f")]);
    assert!(hit(&t, "GET", "/hello%20world").is_some());
    assert_eq!(
        t.lookup("GET", "/hello%20world").unwrap().1.route_key,
        "GET /hello world"
    );
}

#[test]
fn no_match_for_unrooted_or_unrouted_paths() {
    let t = table(&[(Some("GET"), "/a", "a")]);
    assert_eq!(hit(&t, "GET", "a"), None);
    assert_eq!(hit(&t, "GET", "/b"), None);
    assert_eq!(hit(&t, "GET", "/a/b"), None);
    assert_eq!(hit(&RouteTable::new(), "GET", "/"), None);
}

#[test]
fn same_method_and_shape_conflicts() {
    let mut t = table(&[(Some("GET"), "/items/{id}", "a"), (None, "/x", "a")]);
    let err = t
        .insert(Some("GET"), "/items/{name}", "b".into())
        .unwrap_err();
    assert!(
        matches!(&err, RouteError::Conflict { existing_target, existing_route_key, .. }
            if existing_target == "a" && existing_route_key == "GET /items/{id}"),
        "{err:?}"
    );
    assert!(err.to_string().contains("GET /items/{name}"), "{err}");
    // Re-adding the same route is a conflict too; ANY spelled out is still ANY.
    assert!(matches!(
        t.insert(Some("GET"), "/items/{id}", "a".into()),
        Err(RouteError::Conflict { .. })
    ));
    assert!(matches!(
        t.insert(Some("any"), "/x", "b".into()),
        Err(RouteError::Conflict { .. })
    ));
    // Different method, literal or shape: no conflict.
    t.insert(Some("PUT"), "/items/{id}", "b".into()).unwrap();
    t.insert(None, "/items/{id}", "b".into()).unwrap();
    t.insert(Some("GET"), "/items/{id}/{part}", "b".into())
        .unwrap();
    t.insert(Some("GET"), "/items/{proxy+}", "b".into())
        .unwrap();
    t.insert(Some("GET"), "/items/latest", "b".into()).unwrap();
}

#[test]
fn remove_target_frees_its_routes() {
    let mut t = table(&[
        (Some("GET"), "/a", "one"),
        (Some("GET"), "/b", "one"),
        (Some("GET"), "/c", "two"),
    ]);
    t.remove_target("one");
    assert_eq!(hit(&t, "GET", "/a"), None);
    assert_eq!(hit(&t, "GET", "/b"), None);
    assert_eq!(hit(&t, "GET", "/c").unwrap().0, "two");
    t.insert(Some("GET"), "/a", "three".into()).unwrap();
    assert_eq!(hit(&t, "GET", "/a").unwrap().0, "three");
}

#[test]
fn invalid_routes_are_rejected_with_a_reason() {
    let mut t = RouteTable::new();
    for path in [
        "a",
        "/a/",
        "/a//b",
        "/a/{proxy+}/b",
        "/a/x{id}",
        "/a/{}",
        "/a/{+}",
        "/a/{id}/{id}",
        "/a?b",
        "/{bad name}",
    ] {
        let err = t.insert(Some("GET"), path, "f".into()).unwrap_err();
        assert!(
            matches!(err, RouteError::InvalidPath { .. }),
            "{path}: {err:?}"
        );
        assert!(err.to_string().contains("function `f`"), "{err}");
    }
    for method in ["", "GE T", "GET\n"] {
        let err = t.insert(Some(method), "/a", "f".into()).unwrap_err();
        assert!(
            matches!(err, RouteError::InvalidMethod { .. }),
            "{method:?}: {err:?}"
        );
    }
    assert_eq!(
        hit(&t, "GET", "/a"),
        None,
        "failed inserts leave no route behind"
    );
}

#[test]
fn stage_is_default() {
    let t = table(&[(None, "/a", "f")]);
    assert_eq!(t.lookup("GET", "/a").unwrap().1.stage, "$default");
}
