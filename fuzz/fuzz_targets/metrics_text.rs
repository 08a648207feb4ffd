//! A sidecar's `/stats/prometheus` as the control plane's service graph reads it: any text is
//! parsed or refused with a line number, and whatever parses becomes nodes and edges whose
//! figures are finite and in range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlite_control::graph::{build, exposition};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (Ok(first), Ok(second)) = (
        exposition::parse(text, |_| true, 10_000),
        exposition::parse(text, build::wanted, 10_000),
    ) else {
        return;
    };
    assert!(second.len() <= first.len());
    let now = tokio::time::Instant::now();
    let base = build::snapshot(&second, now);
    // The same text read again a second later, with every value halved: resets everywhere.
    let halved: Vec<exposition::Sample<'_>> = second
        .iter()
        .map(|s| exposition::Sample {
            value: s.value / 2.0,
            ..s.clone()
        })
        .collect();
    let latest = build::snapshot(&halved, now + std::time::Duration::from_secs(1));
    let (_, edges, _) = build::graph(
        &[build::Reading {
            base: Some(&base),
            latest: &latest,
        }],
        &[],
    );
    for e in edges {
        assert!(e.rps.is_finite() && e.rps >= 0.0, "{e:?}");
        if let Some(r) = e.error_rate {
            assert!((0.0..=1.0).contains(&r), "{e:?}");
        }
        if let Some(s) = e.mtls_share {
            assert!((0.0..=1.0).contains(&s), "{e:?}");
        }
        if let Some(p) = e.p99_ms {
            assert!(p.is_finite(), "{e:?}");
        }
    }
});
