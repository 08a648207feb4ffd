//! End users, through a real control plane: a RequestAuthentication names the identity
//! provider whose tokens `api` accepts (its key set inline, or at a `jwksUri` the control
//! plane fetches), AuthorizationPolicies require a token on some paths and, for the decision
//! record's tenant isolation, a `tenant` claim matching the path. A bad token is a 401 the
//! app never sees; no token passes where no policy asks for one.

use meshlite_tests::apps::{HttpApp, closed_port};
use meshlite_tests::clients::{Http1Client, empty, h1_request};
use meshlite_tests::control::{CONVERGE, ControlPlane, MeshProxy, NAMESPACE, Workload};
use meshlite_tests::deadline::{SOON, eventually};
use meshlite_tests::jwt::{Issuer, JwksServer, now};
use serde_json::json;

const HOST: &str = "api";
const PORT: u16 = 8080;
const IDP: &str = "https://idp.meshlite.test";

/// `api` behind its sidecar, and a caller.
struct Mesh {
    control: ControlPlane,
    api: MeshProxy,
    app: HttpApp,
    web: MeshProxy,
}

impl Mesh {
    async fn start(files: &[(&str, &str)]) -> Mesh {
        let control = ControlPlane::start(files).await;
        let app = HttpApp::start("api").await;
        let api = MeshProxy::start(
            &control.access(NAMESPACE, "api").await,
            &Workload::new("api").serving(PORT, app.addr),
        )
        .await;
        let web = MeshProxy::caller(&control, "web").await;
        control
            .wait_connected(&["api.default", "web.default"], SOON)
            .await;
        Mesh {
            control,
            api,
            app,
            web,
        }
    }

    /// `GET path` from `web` with `token` as a bearer token (if any): status and body.
    async fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| ("authorization", b))
            .into_iter()
            .collect();
        self.send(path, &headers).await
    }

    /// `GET path` from `web` with `headers`: status and body.
    async fn send(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut b = h1_request("GET", &format!("{HOST}:{PORT}"), path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let reply = Http1Client::connect(self.web.outbound())
            .await
            .exchange(b.body(empty()).expect("request"))
            .await;
        (reply.status.as_u16(), reply.text())
    }

    /// Waits until `GET path` with `token` gets `status` (the policies reached the sidecar).
    async fn wait_status(&self, path: &str, token: Option<&str>, status: u16) {
        let what = format!("GET {path} to get {status}");
        eventually(&what, CONVERGE, || async {
            (self.get(path, token).await.0 == status).then_some(())
        })
        .await;
    }
}

/// The RequestAuthentication of `api`, trusting `jwks` (a `jwks:` or `jwksUri:` line).
fn request_authentication(keys: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: api, namespace: default}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  jwtRules:
  - issuer: {IDP}
    audiences: [api]
    {keys}
    outputClaimToHeaders:
    - {{header: x-jwt-sub, claim: sub}}
    - {{header: x-jwt-tenant, claim: tenant}}
"
    )
}

/// `/private/*` needs a verified token; everything else is open.
const PRIVATE_NEEDS_A_TOKEN: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  action: ALLOW
  rules:
  - to: [{operation: {notPaths: ['/private/*']}}]
  - from: [{source: {requestPrincipals: ['*']}}]
    to: [{operation: {paths: ['/private/*']}}]
";

/// The decision record's tenant isolation: each tenant's paths only for its own tokens.
const TENANT_ISOLATION: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tenants, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  action: ALLOW
  rules:
  - to: [{operation: {paths: ['/tenants/a/*']}}]
    when: [{key: 'request.auth.claims[tenant]', values: [a]}]
  - to: [{operation: {paths: ['/tenants/b/*']}}]
    when: [{key: 'request.auth.claims[tenant]', values: [b]}]
";

fn inline(idp: &Issuer) -> String {
    format!("jwks: '{}'", idp.jwks())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_before_the_app_and_authorization_reads_them() {
    let idp = Issuer::new(IDP);
    let mesh = Mesh::start(&[
        ("jwt.yaml", &request_authentication(&inline(&idp))),
        ("authz.yaml", PRIVATE_NEEDS_A_TOKEN),
    ])
    .await;
    mesh.wait_status("/private/orders", None, 403).await;
    let alice = idp.token("alice", "api", &[]);
    let (status, body) = mesh.get("/private/orders", Some(&alice)).await;
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("the app's description");
    assert_eq!(seen["headers"]["x-jwt-sub"], json!(["alice"]), "{body}");
    assert!(
        seen["headers"].get("authorization").is_none(),
        "the token is not forwarded: {body}"
    );
    assert_eq!(
        mesh.get("/public", None).await.0,
        200,
        "no token, no policy"
    );
    let (status, body) = mesh.send("/public", &[("x-jwt-sub", "root")]).await;
    assert_eq!(status, 200);
    assert!(
        !body.contains("x-jwt-sub"),
        "only a verified token sets the claim headers: {body}"
    );
    assert_eq!(
        mesh.get("/private/orders", None).await,
        (403, "RBAC: access denied".to_string()),
        "a policy requires one"
    );

    let served = mesh.app.requests();
    let impostor = Issuer::new(IDP);
    let stranger = Issuer::new("https://elsewhere.example");
    let refused = [
        (
            idp.sign(&json!({"iss": IDP, "sub": "alice", "aud": "api", "exp": now() - 3600})),
            "Jwt is expired",
        ),
        (
            stranger.token("alice", "api", &[]),
            "Jwt issuer is not configured",
        ),
        (
            idp.token("alice", "billing", &[]),
            "Audiences in Jwt are not allowed",
        ),
        (
            impostor.token("alice", "api", &[]),
            "Jwt verification fails",
        ),
    ];
    for (token, message) in &refused {
        for path in ["/public", "/private/orders"] {
            let (status, body) = mesh.get(path, Some(token)).await;
            assert_eq!((status, body.as_str()), (401, *message), "{path}");
        }
    }
    assert_eq!(
        mesh.app.requests(),
        served,
        "a refused token never reaches the app"
    );
    let denied = mesh.api.metric("envoy_http_jwt_authn_denied", &[]).await;
    assert_eq!(denied, 8.0);
    let allowed = mesh.api.metric("envoy_http_jwt_authn_allowed", &[]).await;
    assert!(allowed >= 3.0, "{allowed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_uri_is_fetched_by_the_control_plane_and_fails_closed_when_down() {
    let idp = Issuer::rsa(IDP);
    let keys = JwksServer::start(idp.jwks()).await;
    let down = Issuer::new("https://down.example");
    let ra = format!(
        "{}  - issuer: https://down.example\n    jwksUri: http://{}/keys\n",
        request_authentication(&format!("jwksUri: {}", keys.uri())),
        closed_port()
    );
    let mesh = Mesh::start(&[("jwt.yaml", &ra), ("authz.yaml", PRIVATE_NEEDS_A_TOKEN)]).await;
    let alice = idp.token("alice", "api", &[]);
    mesh.wait_status("/private/orders", Some(&alice), 200).await;
    assert!(keys.requests() >= 1, "the control plane fetched the set");
    assert_eq!(mesh.get("/private/orders", None).await.0, 403);
    let (status, body) = mesh
        .get("/public", Some(&down.token("bob", "api", &[])))
        .await;
    assert_eq!(
        (status, body.as_str()),
        (401, "Jwks doesn't have key to match kid or alg from Jwt"),
        "an unreachable jwksUri fails closed"
    );
    let fetched = |name: &'static str| {
        let control = &mesh.control;
        async move { control.metric(name, &[]).await }
    };
    assert!(fetched("pilot_jwks_resolver_network_fetch_success_total").await >= 1.0);
    assert!(fetched("pilot_jwks_resolver_network_fetch_fail_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_reaches_only_its_own_paths() {
    let idp = Issuer::new(IDP);
    let mesh = Mesh::start(&[
        ("jwt.yaml", &request_authentication(&inline(&idp))),
        ("authz.yaml", TENANT_ISOLATION),
    ])
    .await;
    let a = idp.token("alice", "api", &[("tenant", json!("a"))]);
    let b = idp.token("bob", "api", &[("tenant", json!("b"))]);
    mesh.wait_status("/tenants/a/orders", Some(&a), 200).await;
    let (status, body) = mesh.get("/tenants/a/orders", Some(&a)).await;
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_str(&body).expect("the app's description");
    assert_eq!(seen["headers"]["x-jwt-tenant"], json!(["a"]), "{body}");
    assert_eq!(mesh.get("/tenants/b/orders", Some(&a)).await.0, 403);
    assert_eq!(mesh.get("/tenants/b/orders", Some(&b)).await.0, 200);
    assert_eq!(mesh.get("/tenants/a/orders", Some(&b)).await.0, 403);
    assert_eq!(mesh.get("/tenants/a/orders", None).await.0, 403, "no token");
    assert_eq!(
        mesh.send("/tenants/a/orders", &[("x-jwt-tenant", "a")])
            .await
            .0,
        403,
        "a header is no claim"
    );
}
