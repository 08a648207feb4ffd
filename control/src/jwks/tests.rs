//! The JWKS cache on tokio's paused clock: a scripted fetcher stands in for the issuer, so
//! twenty minutes of refresh interval pass in microseconds.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

const URI: &str = "https://issuer.example/jwks.json";
const KEY_A: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"a","x":"AA","y":"AA"}]}"#;
const KEY_B: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"b","x":"AA","y":"AA"}]}"#;

/// What the issuer answers next, and how long it takes.
#[derive(Default)]
struct Script {
    answer: Mutex<Option<Result<String, String>>>,
    delay: Mutex<Duration>,
    calls: AtomicUsize,
}

impl Script {
    fn serve(&self, body: &str) {
        *self.answer.lock().unwrap() = Some(Ok(body.to_string()));
    }

    fn fail(&self) {
        *self.answer.lock().unwrap() = Some(Err("connection refused".into()));
    }
}

impl Fetch for Script {
    fn fetch<'a>(
        &'a self,
        _uri: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<String, FetchError>> + Send + 'a>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = *self.delay.lock().unwrap();
        let answer = self.answer.lock().unwrap().clone();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            match answer {
                Some(Ok(body)) => Ok(body),
                Some(Err(e)) => Err(FetchError::Io(e)),
                None => Err(FetchError::Io("no answer scripted".into())),
            }
        })
    }
}

fn cache(script: &Arc<Script>) -> (Arc<JwksCache>, JwksFetches) {
    let fetches = JwksFetches::default();
    let fetcher: Arc<dyn Fetch> = script.clone();
    (Arc::new(JwksCache::new(fetcher, fetches.clone())), fetches)
}

fn wanted(timeout: Duration) -> BTreeMap<String, Duration> {
    BTreeMap::from([(URI.to_string(), timeout)])
}

fn count(fetches: &JwksFetches, result: &'static str) -> u64 {
    match result {
        "success" => fetches.success.get(),
        _ => fetches.failure.get(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_refresh_picks_up_a_rotated_key_and_triggers_a_push() {
    let script = Arc::new(Script::default());
    script.serve(KEY_A);
    let (cache, fetches) = cache(&script);
    assert!(cache.sync(&wanted(Duration::from_secs(5))).await);
    assert_eq!(&*cache.resolved()[URI], KEY_A);
    assert!(
        !cache.sync(&wanted(Duration::from_secs(5))).await,
        "a known URI is not fetched again on every change"
    );
    assert_eq!(script.calls.load(Ordering::SeqCst), 1);

    let pushes = Arc::new(AtomicUsize::new(0));
    let seen = pushes.clone();
    tokio::spawn(cache.clone().run(move || {
        seen.fetch_add(1, Ordering::SeqCst);
    }));
    script.serve(KEY_B);
    tokio::time::sleep(REFRESH_INTERVAL - Duration::from_secs(1)).await;
    assert_eq!(&*cache.resolved()[URI], KEY_A, "not before the interval");
    assert_eq!(pushes.load(Ordering::SeqCst), 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(&*cache.resolved()[URI], KEY_B, "the rotated key");
    assert_eq!(pushes.load(Ordering::SeqCst), 1);
    // The same set again is no change: no push.
    tokio::time::sleep(REFRESH_INTERVAL).await;
    assert_eq!(pushes.load(Ordering::SeqCst), 1);
    assert_eq!(count(&fetches, "success"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_failed_fetch_fails_closed_until_a_retry_succeeds() {
    let script = Arc::new(Script::default());
    script.fail();
    let (cache, fetches) = cache(&script);
    cache.sync(&wanted(Duration::from_secs(5))).await;
    assert_eq!(&*cache.resolved()[URI], FAIL_CLOSED_JWKS);
    assert_eq!(count(&fetches, "failure"), 1);

    let pushes = Arc::new(AtomicUsize::new(0));
    let seen = pushes.clone();
    tokio::spawn(cache.clone().run(move || {
        seen.fetch_add(1, Ordering::SeqCst);
    }));
    tokio::time::sleep(RETRY_INTERVAL + Duration::from_secs(1)).await;
    assert_eq!(count(&fetches, "failure"), 2, "retried within a minute");
    script.serve(KEY_A);
    tokio::time::sleep(RETRY_INTERVAL).await;
    assert_eq!(&*cache.resolved()[URI], KEY_A);
    assert_eq!(pushes.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_last_good_set() {
    let script = Arc::new(Script::default());
    script.serve(KEY_A);
    let (cache, fetches) = cache(&script);
    cache.sync(&wanted(Duration::from_secs(5))).await;
    script.fail();
    assert!(!cache.refresh(false).await);
    assert_eq!(&*cache.resolved()[URI], KEY_A);
    assert_eq!(count(&fetches, "failure"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_issuer_times_out_after_the_rules_timeout() {
    let script = Arc::new(Script::default());
    script.serve(KEY_A);
    *script.delay.lock().unwrap() = Duration::from_secs(30);
    let (cache, fetches) = cache(&script);
    let started = tokio::time::Instant::now();
    cache.sync(&wanted(Duration::from_secs(2))).await;
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(&*cache.resolved()[URI], FAIL_CLOSED_JWKS);
    assert_eq!(count(&fetches, "failure"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_is_not_a_key_set_fails_closed_and_forgotten_uris_go() {
    let script = Arc::new(Script::default());
    script.serve("<html>login</html>");
    let (cache, _) = cache(&script);
    cache.sync(&wanted(Duration::from_secs(5))).await;
    assert_eq!(&*cache.resolved()[URI], FAIL_CLOSED_JWKS);
    assert!(
        cache.sync(&BTreeMap::new()).await,
        "the URI left the config"
    );
    assert!(cache.resolved().is_empty());
}

/// The real fetcher against a local HTTP server.
#[tokio::test]
async fn the_http_fetcher_reads_a_key_set_and_reports_statuses() {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let (status, body) = match req.uri().path() {
                        "/jwks.json" => (200, KEY_A),
                        _ => (404, "not found"),
                    };
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .status(status)
                            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let fetcher = HttpFetcher::default();
    let body = fetcher
        .fetch(&format!("http://{addr}/jwks.json"))
        .await
        .unwrap();
    assert_eq!(body, KEY_A);
    let err = fetcher
        .fetch(&format!("http://{addr}/missing"))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Status(404)), "{err}");
    let err = fetcher.fetch("ftp://x/keys").await.unwrap_err();
    assert!(matches!(err, FetchError::Uri(_)), "{err}");
}
