use std::path::Path;

use super::*;

fn routes(text: &str) -> Routes {
    Routes::parse(Path::new("routes.yaml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> ConfigError {
    Routes::parse(Path::new("routes.yaml"), text).unwrap_err()
}

fn decide<'r>(r: &'r Routes, host: &str, method: &str, path: &str) -> Result<&'r Route, String> {
    decide_with(r, host, method, path, &http::HeaderMap::new())
}

fn decide_with<'r>(
    r: &'r Routes,
    host: &str,
    method: &str,
    path: &str,
    headers: &http::HeaderMap,
) -> Result<&'r Route, String> {
    match r.decide(&RequestHead { host, method, path_and_query: path, headers }) {
        Decision::Allow(route) => Ok(route),
        Decision::Deny(d) => Err(d.reason),
    }
}

/// The TLS/HTTP issue's example routes file, verbatim (the e2e tests use it too).
const ISSUE3_EXAMPLE: &str = include_str!("../../testdata/demo-routes.yaml");

#[test]
fn issue_examples_parse_as_written() {
    let r = routes(ISSUE3_EXAMPLE);
    assert_eq!(r.log_level(), LogLevel::Blocks);
    assert_eq!(r.routes().len(), 3);
    assert_eq!(r.tcp(), &[TcpAllow { host: "upstream.test".into(), port: 18080 }]);
    let cdn = r.route_for("a.cdn.upstream.test").unwrap();
    assert_eq!(cdn.auth, Some(Auth { scheme: AuthScheme::Bearer, token_env: "EGRESS_TOKEN_CDN".into() }));

    let r = routes("tcp:\n  - upstream.test:18080\n");
    assert_eq!(r.tcp().len(), 1);
    let r = routes("routes:\n  - host: api.upstream.test\n    dlp:\n      outbound_on_match: supervise\n");
    assert_eq!(r.routes()[0].dlp.on_match, OnMatch::Supervise);
}

#[test]
fn json_routes_parse_too() {
    let r =
        routes(r#"{"log": 2, "routes": [{"host": "a.test", "auth_scheme": "token", "token_env": "EGRESS_TOKEN_0"}]}"#);
    assert_eq!(r.log_level(), LogLevel::Full);
    assert_eq!(r.routes()[0].auth.as_ref().unwrap().scheme, AuthScheme::Token);
}

#[test]
fn bot_bottle_sample_parses() {
    let r = routes(
        r#"log: 1
routes:
  - host: "api.anthropic.com"
    auth_scheme: "Bearer"
    token_env: "EGRESS_TOKEN_0"
    dlp: {outbound_on_match: redact}
  - host: "gitea.example"
    auth_scheme: "token"
    token_env: "EGRESS_TOKEN_1"
    matches:
      - paths: [{type: prefix, value: /api/v1/}]
        methods: [GET, POST]
    git: {fetch: true}
    dlp:
      outbound_detectors: [token_patterns, known_secrets]
      inbound_detectors: false
  - host: "*.pythonhosted.org"
"#,
    );
    let gitea = r.route_for("gitea.example").unwrap();
    assert_eq!(gitea.dlp.inbound_detectors, Some(vec![]));
    assert_eq!(gitea.dlp.outbound_detectors.as_ref().unwrap().len(), 2);
    assert_eq!(r.route_for("api.anthropic.com").unwrap().dlp.on_match, OnMatch::Redact);
}

#[test]
fn unmatched_requests_are_denied_with_a_readable_reason() {
    let r = routes(ISSUE3_EXAMPLE);
    assert!(decide(&r, "api.upstream.test", "GET", "/v1/models").is_ok());
    assert!(decide(&r, "api.upstream.test", "POST", "/v1/x?y=1").is_ok());
    assert_eq!(
        decide(&r, "api.upstream.test", "DELETE", "/v1/models").unwrap_err(),
        "egress: DELETE /v1/models is not allowed for api.upstream.test"
    );
    assert!(
        decide(&r, "api.upstream.test", "GET", "/v2/models?key=secret")
            .unwrap_err()
            .ends_with("/v2/models is not allowed for api.upstream.test")
    );
    assert_eq!(decide(&r, "evil.test", "GET", "/").unwrap_err(), "egress: host evil.test is not in the allowlist");
}

#[test]
fn wildcard_matches_any_depth_but_not_the_apex_or_lookalikes() {
    let r = routes(ISSUE3_EXAMPLE);
    assert!(r.host_allowed("a.cdn.upstream.test"));
    assert!(r.host_allowed("a.b.c.cdn.upstream.test"));
    assert!(r.host_allowed("A.CDN.Upstream.Test."));
    assert!(!r.host_allowed("cdn.upstream.test"));
    assert!(!r.host_allowed("xcdn.upstream.test"));
    assert!(!r.host_allowed("cdn.upstream.test.evil"));
}

#[test]
fn exact_beats_wildcard_in_any_order_and_longest_wildcard_wins() {
    let r = routes(
        "routes:\n  - host: \"*.example.test\"\n    git: {fetch: true}\n  - host: api.example.test\n  - host: \"*.deep.example.test\"\n    provider: true\n",
    );
    assert!(!r.route_for("api.example.test").unwrap().git_fetch, "exact route wins");
    assert!(r.route_for("other.example.test").unwrap().git_fetch);
    assert!(r.route_for("x.deep.example.test").unwrap().provider, "longer suffix wins");
}

#[test]
fn match_entries_and_within_or_across() {
    let r = routes(
        r#"routes:
  - host: a.test
    matches:
      - paths: [{type: exact, value: /exact}]
        methods: [get]
      - paths: [{type: regex, value: "/items/[0-9]+"}]
        headers: [{name: X-Team, value: blue}]
      - paths: [{type: prefix, value: /seg}]
        headers: [{name: X-Env, value: "prod|stage", type: regex}]
"#,
    );
    assert!(decide(&r, "a.test", "GET", "/exact").is_ok());
    assert!(decide(&r, "a.test", "POST", "/exact").is_err(), "method is ANDed with path");
    assert!(decide(&r, "a.test", "GET", "/exact/more").is_err());
    let mut h = http::HeaderMap::new();
    assert!(decide_with(&r, "a.test", "PUT", "/items/42", &h).is_err(), "header missing");
    h.insert("x-team", "blue".parse().unwrap());
    assert!(decide_with(&r, "a.test", "PUT", "/items/42", &h).is_ok());
    assert!(decide_with(&r, "a.test", "PUT", "/items/42x", &h).is_err(), "regex is anchored");
    h.insert("x-env", "prod".parse().unwrap());
    assert!(decide_with(&r, "a.test", "GET", "/seg/x", &h).is_ok());
    assert!(decide_with(&r, "a.test", "GET", "/segx", &h).is_err(), "prefix is segment-aware");
    h.insert("x-env", "production".parse().unwrap());
    assert!(decide_with(&r, "a.test", "GET", "/seg", &h).is_err());
}

#[test]
fn no_matches_allows_every_path_and_method() {
    let r = routes("routes:\n  - host: a.test\n");
    assert!(decide(&r, "a.test", "DELETE", "/anything/at/all?x").is_ok());
}

#[test]
fn ambiguous_paths_are_refused() {
    let r = routes(ISSUE3_EXAMPLE);
    for p in ["/v1/../admin", "/v1/%2e%2e/admin", "/v1/a%2F..%2Fb", "/v1/./x", "/v1\\..\\x"] {
        assert!(decide(&r, "api.upstream.test", "GET", p).is_err(), "{p} allowed");
    }
}

#[test]
fn git_push_is_always_refused_and_fetch_needs_the_flag() {
    let r = routes(ISSUE3_EXAMPLE);
    let push = decide(&r, "git.upstream.test", "GET", "/repo.git/info/refs?service=git-receive-pack").unwrap_err();
    assert!(push.contains("git push over HTTPS is blocked") && push.contains("SSH"), "{push}");
    assert!(decide(&r, "git.upstream.test", "POST", "/repo.git/git-receive-pack").is_err());
    assert!(decide(&r, "git.upstream.test", "GET", "/repo.git/info/refs?service=git-upload-pack").is_ok());
    assert!(decide(&r, "git.upstream.test", "POST", "/repo.git/git-upload-pack").is_ok());
    let r = routes("routes:\n  - host: g.test\n");
    assert!(decide(&r, "g.test", "POST", "/r.git/git-upload-pack").unwrap_err().contains("git: {fetch: true}"));
    assert!(decide(&r, "g.test", "GET", "/r.git/info/refs?service=git-upload-pack").is_err());
}

#[test]
fn dlp_defaults_supervise_and_provider_routes_redact_unless_explicit() {
    let r = routes(
        "routes:\n  - host: a.test\n  - host: llm.test\n    provider: true\n  - host: b.test\n    provider: true\n    dlp: {outbound_on_match: block}\n",
    );
    assert_eq!(r.route_for("a.test").unwrap().dlp.on_match, OnMatch::Supervise);
    assert_eq!(r.route_for("llm.test").unwrap().dlp.on_match, OnMatch::Redact);
    assert_eq!(r.route_for("b.test").unwrap().dlp.on_match, OnMatch::Block);
}

#[test]
fn errors_name_the_line_and_field() {
    let e = err("routes:\n  - host: a.test\n    matchez: []\n");
    let msg = e.to_string();
    assert!(msg.starts_with("routes.yaml: line 3"), "{msg}");
    assert!(msg.contains("routes[0]") && msg.contains("matchez"), "{msg}");

    let e = err("log: 3\n");
    assert_eq!(e.problems[0].field, "log");
}

#[test]
fn validation_collects_every_problem() {
    let e = err(r#"routes:
  - host: "bad host"
    auth_scheme: Bearer
  - host: ok.test
    matches:
      - paths: [{type: regex, value: "("}]
        methods: [FETCH]
    dlp: {outbound_detectors: [token_patterns, nope], outbound_on_match: allow}
tcp: [nohost, "a.test:0"]
"#);
    let fields: Vec<&str> = e.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "routes[0].host",
            "routes[0].token_env",
            "routes[1].matches[0].paths[0].value",
            "routes[1].matches[0].methods[0]",
            "routes[1].dlp.outbound_on_match",
            "routes[1].dlp.outbound_detectors[1]",
            "tcp[0]",
            "tcp[1]",
        ]
    );
}

#[test]
fn auth_both_or_neither_and_basic_encodes() {
    assert!(err("routes:\n  - host: a.test\n    token_env: X\n").to_string().contains("needs auth_scheme"));
    let r = routes("routes:\n  - host: a.test\n    auth: {scheme: Basic, token_env: EGRESS_TOKEN_GIT}\n");
    let auth = r.routes()[0].auth.as_ref().unwrap();
    assert_eq!(auth.scheme.header_value("user:tok"), "Basic dXNlcjp0b2s=");
    assert_eq!(AuthScheme::Token.header_value("abc"), "token abc");
}

#[test]
fn dns_names_cover_routes_wildcards_and_tcp_hosts() {
    let r = routes(ISSUE3_EXAMPLE);
    assert!(r.dns_name_allowed("api.upstream.test"));
    assert!(r.dns_name_allowed("x.cdn.upstream.test"));
    assert!(r.dns_name_allowed("upstream.test"));
    assert!(!r.dns_name_allowed("evil.test"));
}

#[test]
fn allowlist_names_variables_but_holds_no_values() {
    let r = routes(ISSUE3_EXAMPLE);
    let json = r.allowlist_json();
    assert_eq!(json["routes"][2]["token_env"], "EGRESS_TOKEN_CDN");
    assert_eq!(json["routes"][0]["matches"][0]["paths"][0]["value"], "/v1/");
    assert_eq!(json["tcp"][0], "upstream.test:18080");
}

#[test]
fn allowlist_keeps_the_seeds_shape() {
    let r = routes(
        "log: 1\nroutes:\n  - host: api.test\n    auth_scheme: Bearer\n    token_env: EGRESS_TOKEN_0\n    git: {fetch: true}\n    \
         dlp: {inbound_detectors: false, outbound_on_match: block}\n  - host: plain.test\n",
    );
    let json = r.allowlist_json();
    // `{"routes": [...]}` and nothing else when there is no `tcp:`.
    assert_eq!(json.as_object().unwrap().keys().collect::<Vec<_>>(), ["routes"]);
    assert_eq!(
        json["routes"][0],
        serde_json::json!({"host": "api.test", "auth_scheme": "Bearer", "token_env": "EGRESS_TOKEN_0",
                           "git": {"fetch": true},
                           "dlp": {"inbound_detectors": false, "outbound_on_match": "block"}})
    );
    // Only the keys a route sets; the resolved policy always.
    assert_eq!(json["routes"][1], serde_json::json!({"host": "plain.test", "dlp": {"outbound_on_match": "supervise"}}));
}

#[test]
fn encoded_slashes_are_data_and_routes_match_one_spelling() {
    let r = routes(
        "routes:\n  - host: registry.npmjs.test\n  - host: gitlab.test\n    matches:\n      - paths: [{type: prefix, value: /api/v4/projects/}]\n  - host: api.test\n    matches:\n      - paths: [{type: prefix, value: /v1/}, {type: exact, value: /@types%2fnode}]\n",
    );
    assert!(decide(&r, "registry.npmjs.test", "GET", "/@types%2fnode").is_ok());
    assert!(decide(&r, "gitlab.test", "GET", "/api/v4/projects/group%2Fproject/issues?state=opened").is_ok());
    // `%76` is `v`: the same path to every upstream, so the same decision.
    assert!(decide(&r, "api.test", "GET", "/%761/models").is_ok());
    assert!(decide(&r, "api.test", "GET", "/@types%2Fnode").is_ok());
    // An encoded slash does not open a prefix it is not under.
    assert!(decide(&r, "api.test", "GET", "/v1%2Fmodels").is_err());
    // Dot segments behind encoded separators are refused.
    let err = decide(&r, "gitlab.test", "GET", "/api/v4/projects/x%2F..%2F..%2Fadmin").unwrap_err();
    assert!(err.contains("dot segment"), "{err}");
}

#[test]
fn git_push_is_refused_however_the_service_is_spelled() {
    let r = routes("routes:\n  - host: git.upstream.test\n    git: {fetch: true}\n");
    for path in [
        "/repo.git/git%2Dreceive-pack",
        "/repo.git/git-receive-pack/",
        "/repo.git/git-receive-pack;x=1",
        "/repo.git/info/refs?service=git%2dreceive-pack",
    ] {
        let err = decide(&r, "git.upstream.test", "POST", path).unwrap_err();
        assert!(err.contains("git push"), "{path}: {err}");
    }
}

#[test]
fn route_paths_that_can_never_match_are_load_errors() {
    let err = err("routes:\n  - host: a.test\n    matches:\n      - paths: [{type: prefix, value: /v1/../admin}]\n")
        .to_string();
    assert!(err.contains("routes[0].matches[0].paths[0].value"), "{err}");
}

#[test]
fn a_bad_log_level_is_shown_as_written_not_as_rust() {
    let e = err("log: 7\n").to_string();
    assert!(e.contains("log: 7 is not one of"), "{e}");
    assert!(!e.contains("Number"), "{e}");
    let e = err("log: loud\n").to_string();
    assert!(e.contains("\"loud\" is not one of"), "{e}");
}
