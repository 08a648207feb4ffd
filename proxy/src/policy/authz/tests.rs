//! The policy engine against Istio's documented cases: every row of SEMANTICS 4.1 and the
//! edge cases of 4.2, as policies the control plane would push.

use super::*;
use meshlite_xds_proto::v1;
use meshlite_xds_proto::v1::authorization_policy::Action;
use std::collections::HashMap;
use std::sync::Mutex;

/// Counters by policy name, kept so the tests can read what was counted.
#[derive(Default)]
struct Stats(Mutex<HashMap<String, PolicyStats>>);

impl StatsSource for Stats {
    fn stats(&self, policy: &str) -> PolicyStats {
        self.0
            .lock()
            .unwrap()
            .entry(policy.to_string())
            .or_default()
            .clone()
    }
}

impl Stats {
    fn http(&self, policy: &str) -> (u64, u64, u64, u64) {
        let c = self.stats(policy).http;
        (
            c.allowed.get(),
            c.denied.get(),
            c.shadow_allowed.get(),
            c.shadow_denied.get(),
        )
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn policy(name: &str, action: Action, rules: Vec<v1::Rule>) -> v1::AuthorizationPolicy {
    v1::AuthorizationPolicy {
        origin: format!("default/{name}"),
        action: action as i32,
        rules,
        ..Default::default()
    }
}

fn from(source: v1::Source) -> v1::Rule {
    v1::Rule {
        from: vec![source],
        ..Default::default()
    }
}

fn to(op: v1::Operation) -> v1::Rule {
    v1::Rule {
        to: vec![op],
        ..Default::default()
    }
}

fn when(key: &str, values: &[&str], not_values: &[&str]) -> v1::Rule {
    v1::Rule {
        when: vec![v1::Condition {
            key: key.into(),
            values: strings(values),
            not_values: strings(not_values),
        }],
        ..Default::default()
    }
}

fn local() -> TrustDomains {
    TrustDomains {
        local: "cluster.local".into(),
        aliases: vec![],
    }
}

fn compile(policies: &[v1::AuthorizationPolicy]) -> (Authorizer, Stats) {
    let stats = Stats::default();
    let a = Authorizer::compile(policies, &local(), &stats).expect("compiles");
    (a, stats)
}

fn peer(id: &str) -> Peer {
    Peer::new(&SpiffeId::parse(id).unwrap())
}

/// A request builder over the fields the cases vary.
struct Call {
    peer: Option<Peer>,
    source: IpAddr,
    remote: IpAddr,
    port: u16,
    host: &'static str,
    method: &'static str,
    path: &'static str,
    headers: HeaderMap,
    auth: Option<RequestAuth>,
    tcp: bool,
    sni: Option<&'static str>,
}

fn call() -> Call {
    Call {
        peer: Some(peer(
            "spiffe://cluster.local/ns/default/sa/intent-controller",
        )),
        source: "10.0.0.5".parse().unwrap(),
        remote: "10.0.0.5".parse().unwrap(),
        port: 8080,
        host: "llm-processor",
        method: "POST",
        path: "/api/v1/process",
        headers: HeaderMap::new(),
        auth: None,
        tcp: false,
        sni: None,
    }
}

impl Call {
    fn plaintext(mut self) -> Self {
        self.peer = None;
        self
    }
    fn by(mut self, id: &str) -> Self {
        self.peer = Some(peer(id));
        self
    }
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    fn path(mut self, p: &'static str) -> Self {
        self.path = p;
        self
    }
    fn host(mut self, h: &'static str) -> Self {
        self.host = h;
        self
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.append(k, http::HeaderValue::from_static(v));
        self
    }
    fn tcp(mut self) -> Self {
        self.tcp = true;
        self
    }
    fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    fn source_ip(mut self, ip: &str) -> Self {
        self.source = ip.parse().unwrap();
        self.remote = self.source;
        self
    }
    fn jwt(mut self, claims: serde_json::Value) -> Self {
        let claims = claims.as_object().cloned().unwrap_or_default();
        let iss = claims["iss"].as_str().unwrap_or_default();
        let sub = claims["sub"].as_str().unwrap_or_default();
        self.auth = Some(RequestAuth {
            principal: format!("{iss}/{sub}"),
            audiences: match claims.get("aud") {
                Some(serde_json::Value::String(s)) => vec![s.clone()],
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect(),
                _ => vec![],
            },
            presenter: claims.get("azp").and_then(|v| v.as_str()).map(String::from),
            space_delimited: vec!["scope".to_string(), "permission".to_string()].into(),
            claims,
        });
        self
    }

    fn allowed_by(&self, a: &Authorizer) -> bool {
        a.evaluate(&self.attributes()).allowed
    }

    fn attributes(&self) -> Attributes<'_> {
        Attributes {
            peer: self.peer.as_ref(),
            source_ip: self.source,
            remote_ip: self.remote,
            destination_ip: "10.0.0.9".parse().unwrap(),
            destination_port: self.port,
            sni: self.sni,
            request: (!self.tcp).then_some(Request {
                host: self.host,
                method: self.method,
                path: self.path,
                headers: &self.headers,
                auth: self.auth.as_ref(),
            }),
        }
    }
}

// SEMANTICS 4.1: the policy shapes.

#[test]
fn no_policy_allows_everything() {
    let (a, _) = compile(&[]);
    assert!(a.is_empty());
    assert!(call().allowed_by(&a) && call().plaintext().tcp().allowed_by(&a));
}

#[test]
fn an_allow_policy_without_rules_denies_everything() {
    let (a, stats) = compile(&[policy("allow-nothing", Action::Allow, vec![])]);
    assert!(!call().allowed_by(&a));
    assert!(!call().tcp().allowed_by(&a));
    let v = a.evaluate(&call().attributes());
    assert!(
        v.by.is_none(),
        "no policy matched: the default deny decided"
    );
    assert_eq!(stats.http("none").1, 2, "both denials counted under `none`");
}

#[test]
fn an_empty_rule_matches_everything() {
    let (a, _) = compile(&[policy(
        "allow-all",
        Action::Allow,
        vec![v1::Rule::default()],
    )]);
    assert!(call().plaintext().method("DELETE").allowed_by(&a));
    let (d, _) = compile(&[policy("deny-all", Action::Deny, vec![v1::Rule::default()])]);
    assert!(!call().allowed_by(&d));
    assert!(!call().tcp().allowed_by(&d));
}

#[test]
fn a_deny_policy_without_rules_has_no_effect() {
    let (a, _) = compile(&[policy("deny-nothing", Action::Deny, vec![])]);
    assert!(call().allowed_by(&a));
}

/// The decision record's policy: llm-processor only for intent-controller with POST
/// /api/v1/process, and a DENY on a header that wins over the ALLOW.
fn decision_record() -> Vec<v1::AuthorizationPolicy> {
    vec![
        policy(
            "llm-processor",
            Action::Allow,
            vec![v1::Rule {
                from: vec![v1::Source {
                    principals: strings(&["cluster.local/ns/default/sa/intent-controller"]),
                    ..Default::default()
                }],
                to: vec![v1::Operation {
                    methods: strings(&["POST"]),
                    paths: strings(&["/api/v1/process"]),
                    ..Default::default()
                }],
                when: vec![],
            }],
        ),
        policy(
            "block-debug",
            Action::Deny,
            vec![when("request.headers[x-debug]", &["*"], &[])],
        ),
    ]
}

#[test]
fn the_decision_record_policy() {
    let (a, stats) = compile(&decision_record());
    assert!(call().allowed_by(&a));
    let v = a.evaluate(&call().attributes());
    assert_eq!(
        v.by.map(|m| (&**m.policy, m.rule)),
        Some(("default/llm-processor", 0))
    );
    assert!(
        !call()
            .by("spiffe://cluster.local/ns/default/sa/other")
            .allowed_by(&a)
    );
    assert!(!call().plaintext().allowed_by(&a));
    assert!(!call().method("GET").allowed_by(&a));
    assert!(!call().path("/api/v1/process/x").allowed_by(&a));
    assert!(
        !call().header("x-debug", "1").allowed_by(&a),
        "DENY wins over ALLOW"
    );
    let v = a.evaluate(&call().header("x-debug", "1").attributes());
    assert_eq!(v.by.map(|m| &**m.policy), Some("default/block-debug"));
    let (allowed, _, _, _) = stats.http("default/llm-processor");
    let (_, denied, _, _) = stats.http("default/block-debug");
    assert_eq!((allowed, denied), (2, 2));
    assert_eq!(stats.http("none").1, 4, "four calls matched no ALLOW rule");
}

// SEMANTICS 4.2: fields.

#[test]
fn principals_need_an_authenticated_peer_and_not_principals_pass_plaintext() {
    let any = |field: v1::Source| compile(&[policy("p", Action::Allow, vec![from(field)])]).0;
    let a = any(v1::Source {
        principals: strings(&["*"]),
        ..Default::default()
    });
    assert!(call().allowed_by(&a) && !call().plaintext().allowed_by(&a));
    let a = any(v1::Source {
        not_principals: strings(&["cluster.local/ns/default/sa/intent-controller"]),
        ..Default::default()
    });
    assert!(!call().allowed_by(&a));
    assert!(call().plaintext().allowed_by(&a));
    let a = any(v1::Source {
        principals: strings(&["cluster.local/ns/default/*"]),
        not_principals: strings(&["*/sa/bad"]),
        ..Default::default()
    });
    assert!(call().allowed_by(&a), "X and notX are ANDed");
    assert!(
        !call()
            .by("spiffe://cluster.local/ns/default/sa/bad")
            .allowed_by(&a)
    );
    assert!(
        !call()
            .by("spiffe://cluster.local/ns/other/sa/x")
            .allowed_by(&a)
    );
}

#[test]
fn cluster_local_names_the_local_trust_domain_and_aliases_match_too() {
    let tds = TrustDomains {
        local: "corp.example".into(),
        aliases: vec!["old.example".into()],
    };
    let p = policy(
        "p",
        Action::Allow,
        vec![from(v1::Source {
            principals: strings(&["cluster.local/ns/default/sa/a"]),
            ..Default::default()
        })],
    );
    let a = Authorizer::compile(&[p], &tds, &Stats::default()).unwrap();
    assert!(
        call()
            .by("spiffe://corp.example/ns/default/sa/a")
            .allowed_by(&a)
    );
    assert!(
        call()
            .by("spiffe://old.example/ns/default/sa/a")
            .allowed_by(&a)
    );
    assert!(
        !call()
            .by("spiffe://other.example/ns/default/sa/a")
            .allowed_by(&a)
    );
    let p = policy(
        "td",
        Action::Allow,
        vec![from(v1::Source {
            trust_domains: strings(&["cluster.local"]),
            ..Default::default()
        })],
    );
    let a = Authorizer::compile(&[p], &tds, &Stats::default()).unwrap();
    assert!(call().by("spiffe://corp.example/ns/x/sa/y").allowed_by(&a));
    assert!(!call().by("spiffe://other.example/ns/x/sa/y").allowed_by(&a));
}

#[test]
fn namespaces_come_from_the_principal() {
    let (a, _) = compile(&[policy(
        "p",
        Action::Allow,
        vec![from(v1::Source {
            namespaces: strings(&["prod-*"]),
            ..Default::default()
        })],
    )]);
    assert!(
        call()
            .by("spiffe://cluster.local/ns/prod-eu/sa/x")
            .allowed_by(&a)
    );
    assert!(
        !call()
            .by("spiffe://cluster.local/ns/dev/sa/x")
            .allowed_by(&a)
    );
    assert!(!call().plaintext().allowed_by(&a), "a namespace needs mTLS");
    assert!(
        !call()
            .by("spiffe://cluster.local/prod-eu/web")
            .allowed_by(&a),
        "an ID without Istio's shape has no namespace"
    );
}

#[test]
fn ip_blocks_and_remote_ip_blocks() {
    let (a, _) = compile(&[policy(
        "p",
        Action::Allow,
        vec![from(v1::Source {
            ip_blocks: strings(&["10.0.0.0/24"]),
            not_ip_blocks: strings(&["10.0.0.66"]),
            ..Default::default()
        })],
    )]);
    assert!(call().source_ip("10.0.0.7").allowed_by(&a));
    assert!(!call().source_ip("10.0.0.66").allowed_by(&a));
    assert!(!call().source_ip("10.0.1.7").allowed_by(&a));
    let (a, _) = compile(&[policy(
        "p",
        Action::Deny,
        vec![from(v1::Source {
            remote_ip_blocks: strings(&["203.0.113.0/24"]),
            ..Default::default()
        })],
    )]);
    let mut c = call();
    c.remote = "203.0.113.9".parse().unwrap();
    assert!(!c.allowed_by(&a), "remote.ip is the original client");
    assert!(call().allowed_by(&a));
}

#[test]
fn hosts_are_case_insensitive_and_carry_their_port() {
    let (a, _) = compile(&[policy(
        "p",
        Action::Allow,
        vec![to(v1::Operation {
            hosts: strings(&["LLM-Processor"]),
            ..Default::default()
        })],
    )]);
    assert!(call().host("llm-processor").allowed_by(&a));
    assert!(call().host("LLM-PROCESSOR").allowed_by(&a));
    assert!(
        !call().host("llm-processor:8080").allowed_by(&a),
        "SEMANTICS 4.2 edge case 1: list both forms"
    );
}

#[test]
fn methods_are_case_sensitive() {
    let (a, _) = compile(&[policy(
        "p",
        Action::Allow,
        vec![to(v1::Operation {
            methods: strings(&["GET", "HEAD"]),
            ..Default::default()
        })],
    )]);
    assert!(call().method("GET").allowed_by(&a) && call().method("HEAD").allowed_by(&a));
    assert!(!call().method("get").allowed_by(&a));
}

#[test]
fn paths_exact_prefix_suffix_and_templates() {
    let deny = |paths: &[&str]| {
        compile(&[policy(
            "p",
            Action::Deny,
            vec![to(v1::Operation {
                paths: strings(paths),
                ..Default::default()
            })],
        )])
        .0
    };
    let a = deny(&["/admin"]);
    assert!(!call().path("/admin").allowed_by(&a));
    assert!(
        call().path("/admin/").allowed_by(&a) && call().path("/ADMIN").allowed_by(&a),
        "SEMANTICS 4.2 edge case 2: an exact path misses its variants"
    );
    let a = deny(&["/admin*"]);
    assert!(!call().path("/admin/").allowed_by(&a) && !call().path("/admin").allowed_by(&a));
    let a = deny(&["*.php"]);
    assert!(!call().path("/x/index.php").allowed_by(&a) && call().path("/x").allowed_by(&a));
    let a = deny(&["/users/{*}/orders", "/files/{**}"]);
    assert!(!call().path("/users/7/orders").allowed_by(&a));
    assert!(call().path("/users/7/8/orders").allowed_by(&a));
    assert!(!call().path("/files/a/b/c").allowed_by(&a));
    assert!(call().path("/files").allowed_by(&a));
}

#[test]
fn ports_are_the_workload_port_on_http_and_tcp() {
    let (a, _) = compile(&[policy(
        "p",
        Action::Allow,
        vec![to(v1::Operation {
            ports: strings(&["8080"]),
            ..Default::default()
        })],
    )]);
    assert!(call().allowed_by(&a) && call().tcp().allowed_by(&a));
    assert!(!call().port(9090).allowed_by(&a) && !call().port(9090).tcp().allowed_by(&a));
}

#[test]
fn sources_are_ored_fields_anded() {
    let (a, _) = compile(&[policy(
        "p",
        Action::Allow,
        vec![v1::Rule {
            from: vec![
                v1::Source {
                    principals: strings(&["cluster.local/ns/default/sa/a"]),
                    ip_blocks: strings(&["10.0.0.0/8"]),
                    ..Default::default()
                },
                v1::Source {
                    namespaces: strings(&["ops"]),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
    )]);
    assert!(
        call()
            .by("spiffe://cluster.local/ns/default/sa/a")
            .allowed_by(&a)
    );
    assert!(
        !call()
            .by("spiffe://cluster.local/ns/default/sa/a")
            .source_ip("192.168.0.1")
            .allowed_by(&a),
        "fields of one source are ANDed"
    );
    assert!(
        call()
            .by("spiffe://cluster.local/ns/ops/sa/z")
            .allowed_by(&a)
    );
}

// `when` conditions.

#[test]
fn header_conditions() {
    let (a, _) = compile(&[policy(
        "p",
        Action::Allow,
        vec![when(
            "request.headers[X-Tenant]",
            &["acme", "beta*"],
            &["beta-blocked"],
        )],
    )]);
    assert!(call().header("x-tenant", "acme").allowed_by(&a));
    assert!(call().header("x-tenant", "beta-1").allowed_by(&a));
    assert!(!call().header("x-tenant", "beta-blocked").allowed_by(&a));
    assert!(!call().allowed_by(&a), "an absent header matches no value");
    assert!(
        !call()
            .header("x-tenant", "acme")
            .header("x-tenant", "zed")
            .allowed_by(&a),
        "several values are seen joined, as Envoy does"
    );
}

#[test]
fn connection_conditions() {
    let (a, _) = compile(&[policy(
        "p",
        Action::Allow,
        vec![v1::Rule {
            when: vec![
                v1::Condition {
                    key: "source.ip".into(),
                    values: strings(&["10.0.0.0/16"]),
                    not_values: vec![],
                },
                v1::Condition {
                    key: "destination.port".into(),
                    values: strings(&["8080"]),
                    not_values: vec![],
                },
                v1::Condition {
                    key: "source.namespace".into(),
                    values: strings(&["default"]),
                    not_values: vec![],
                },
                v1::Condition {
                    key: "source.serviceAccount".into(),
                    values: strings(&["default/intent-controller"]),
                    not_values: vec![],
                },
                v1::Condition {
                    key: "destination.ip".into(),
                    values: strings(&["10.0.0.9"]),
                    not_values: vec![],
                },
            ],
            ..Default::default()
        }],
    )]);
    assert!(call().allowed_by(&a));
    assert!(!call().port(9).allowed_by(&a));
    assert!(!call().source_ip("172.16.0.1").allowed_by(&a));
    assert!(
        !call()
            .by("spiffe://cluster.local/ns/default/sa/other")
            .allowed_by(&a)
    );
    let (sni, _) = compile(&[policy(
        "p",
        Action::Deny,
        vec![when("connection.sni", &["*.internal"], &[])],
    )]);
    let mut c = call();
    c.sni = Some("db.internal");
    assert!(!c.allowed_by(&sni) && call().allowed_by(&sni));
}

#[test]
fn jwt_claims_and_request_principals() {
    let claims = serde_json::json!({
        "iss": "https://issuer.example", "sub": "alice", "aud": ["api", "web"],
        "azp": "cli", "groups": ["dev", "admin"], "scope": "read write",
        "org": {"tenant": "a"}
    });
    let allow = |rule: v1::Rule| compile(&[policy("p", Action::Allow, vec![rule])]).0;
    let a = allow(from(v1::Source {
        request_principals: strings(&["https://issuer.example/*"]),
        ..Default::default()
    }));
    assert!(call().jwt(claims.clone()).allowed_by(&a));
    assert!(!call().allowed_by(&a), "no token: no request principal");
    for (key, value, expect) in [
        ("request.auth.claims[groups]", "admin", true),
        ("request.auth.claims[groups]", "ops", false),
        ("request.auth.claims[scope]", "write", true),
        ("request.auth.claims[org][tenant]", "a", true),
        ("request.auth.claims[org][tenant]", "b", false),
        ("request.auth.audiences", "web", true),
        ("request.auth.presenter", "cli", true),
        (
            "request.auth.principal",
            "https://issuer.example/alice",
            true,
        ),
        (
            "request.auth.principal",
            "https://issuer.example/bob",
            false,
        ),
    ] {
        let a = allow(when(key, &[value], &[]));
        assert_eq!(
            call().jwt(claims.clone()).allowed_by(&a),
            expect,
            "{key} = {value}"
        );
    }
    let a = allow(when("request.auth.claims[groups]", &["*"], &["admin"]));
    assert!(
        !call().jwt(claims).allowed_by(&a),
        "notValues exclude any listed element"
    );
}

// TCP and the HTTP-only fields.

#[test]
fn http_only_fields_never_match_an_allow_rule_on_tcp() {
    let (a, _) = compile(&[policy(
        "p",
        Action::Allow,
        vec![to(v1::Operation {
            methods: strings(&["GET"]),
            ..Default::default()
        })],
    )]);
    assert!(call().method("GET").allowed_by(&a));
    assert!(
        !call().tcp().allowed_by(&a),
        "the rule is dropped on TCP: stricter"
    );
}

#[test]
fn http_only_fields_widen_a_deny_rule_on_tcp() {
    let (a, _) = compile(&[policy(
        "p",
        Action::Deny,
        vec![to(v1::Operation {
            methods: strings(&["POST"]),
            ..Default::default()
        })],
    )]);
    assert!(call().method("GET").allowed_by(&a));
    assert!(
        !call().tcp().allowed_by(&a),
        "SEMANTICS B.7: DENY methods:[POST] without ports denies all TCP"
    );
    let (scoped, _) = compile(&[policy(
        "p",
        Action::Deny,
        vec![to(v1::Operation {
            methods: strings(&["POST"]),
            ports: strings(&["8080"]),
            ..Default::default()
        })],
    )]);
    assert!(!call().tcp().allowed_by(&scoped));
    assert!(
        call().tcp().port(5432).allowed_by(&scoped),
        "scoped by ports"
    );
}

// Dry run, audit, custom.

#[test]
fn dry_run_policies_report_and_never_enforce() {
    let mut deny = policy("try-deny", Action::Deny, vec![v1::Rule::default()]);
    deny.dry_run = true;
    let mut allow = policy(
        "try-allow",
        Action::Allow,
        vec![when("request.headers[x-ok]", &["1"], &[])],
    );
    allow.dry_run = true;
    let (a, stats) = compile(&[deny, allow]);
    let v = a.evaluate(&call().attributes());
    assert!(v.allowed, "nothing enforced");
    let sd = v.shadow_deny.expect("a dry-run DENY exists");
    assert!(!sd.allowed);
    assert_eq!(sd.by.map(|m| &**m.policy), Some("default/try-deny"));
    let sa = v.shadow_allow.expect("a dry-run ALLOW exists");
    assert!(!sa.allowed && sa.by.is_none());
    assert!(
        a.evaluate(&call().header("x-ok", "1").attributes())
            .shadow_allow
            .unwrap()
            .allowed
    );
    assert_eq!(stats.http("default/try-deny").3, 2, "shadow denied twice");
    assert_eq!(stats.http("default/try-allow").2, 1, "shadow allowed once");
    assert_eq!(stats.http("none").3, 1, "no dry-run ALLOW matched once");
}

#[test]
fn audit_marks_without_deciding() {
    let (a, stats) = compile(&[policy(
        "audit-posts",
        Action::Audit,
        vec![to(v1::Operation {
            methods: strings(&["POST"]),
            ..Default::default()
        })],
    )]);
    assert!(a.has_audit());
    let v = a.evaluate(&call().attributes());
    assert!(v.allowed);
    assert_eq!(v.audit.map(|m| &**m.policy), Some("default/audit-posts"));
    assert!(
        a.evaluate(&call().method("GET").attributes())
            .audit
            .is_none()
    );
    assert_eq!(stats.stats("default/audit-posts").http.logged.get(), 1);
}

#[test]
fn custom_policies_name_their_provider() {
    let mut p = policy(
        "ext",
        Action::Custom,
        vec![to(v1::Operation {
            paths: strings(&["/api/*"]),
            ..Default::default()
        })],
    );
    p.provider = "opa".into();
    let (a, _) = compile(&[p]);
    let hit = a
        .custom(&call().path("/api/x").attributes())
        .expect("matches");
    assert_eq!(&**hit.matched.policy, "default/ext");
    assert_eq!(hit.provider.map(|p| &**p), Some("opa"));
    assert!(a.custom(&call().path("/health").attributes()).is_none());
    assert!(
        call().path("/health").allowed_by(&a),
        "CUSTOM alone denies nothing locally"
    );
}

// Refusals.

#[test]
fn what_does_not_compile_names_policy_rule_and_field() {
    let bad = |rule: v1::Rule| {
        Authorizer::compile(
            &[policy("bad", Action::Deny, vec![v1::Rule::default(), rule])],
            &local(),
            &Stats::default(),
        )
        .unwrap_err()
        .to_string()
    };
    let e = bad(when("request.size", &["1"], &[]));
    assert!(
        e.contains("default/bad") && e.contains("rule 1") && e.contains("request.size"),
        "{e}"
    );
    let e = bad(to(v1::Operation {
        paths: strings(&["/a*b"]),
        ..Default::default()
    }));
    assert!(e.contains("paths") && e.contains("infix"), "{e}");
    let e = bad(from(v1::Source {
        ip_blocks: strings(&["10.0.0.0/40"]),
        ..Default::default()
    }));
    assert!(e.contains("ipBlocks"), "{e}");
    let e = bad(when("request.headers[x]", &[], &[]));
    assert!(e.contains("no values"), "{e}");
    let e = bad(when(
        "experimental.envoy.filters.network.mysql_proxy[db.table]",
        &["x"],
        &[],
    ));
    assert!(e.contains("unsupported"), "{e}");
}
