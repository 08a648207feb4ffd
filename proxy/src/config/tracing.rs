//! The `tracing` section of the proxy's file: where this sidecar reports spans, how many
//! requests start a trace, and the tags its spans carry.
//!
//! The shapes are Istio's, so an operator copies them from a MeshConfig or a Telemetry
//! resource: the provider as MeshConfig's `extensionProviders` entry writes it
//! (`opentelemetry: {service, port}` or `zipkin: {service, port}`), and
//! `randomSamplingPercentage` and `customTags` as the Telemetry API's `tracing` block
//! (`literal: {value}`, `header: {name, defaultValue}`, `environment: {name, defaultValue}`).
//! The section is read into [`crate::telemetry::trace::TraceSettings`], the one form the
//! request path uses, together with the pushed MeshConfig's providers and the workload's
//! Telemetry `tracing`, which overrides this section field by field.
//!
//! ```yaml
//! tracing:
//!   provider:
//!     opentelemetry: {service: opentelemetry-collector.monitoring, port: 4317}
//!   randomSamplingPercentage: 10
//!   customTags:
//!     tenant: {header: {name: x-tenant, defaultValue: none}}
//!     cluster: {literal: {value: eu-1}}
//!     pod: {environment: {name: POD_NAME}}
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;

/// The `tracing` section.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingConfig {
    /// The collector spans go to; without it, the pushed MeshConfig's default tracing
    /// provider (`defaultProviders.tracing`), if any.
    #[serde(default)]
    pub provider: Option<ProviderConfig>,
    /// Percentage (0-100) of requests arriving without a sampling decision that start a
    /// trace; without it, the MeshConfig's `defaultConfig.tracing.sampling`, else Istio's
    /// default, 1.
    #[serde(default)]
    pub random_sampling_percentage: Option<f64>,
    /// Extra span tags, by tag name.
    #[serde(default)]
    pub custom_tags: BTreeMap<String, CustomTagConfig>,
}

/// A collector: exactly one kind.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// OTLP over gRPC (an OpenTelemetry collector, port 4317).
    #[serde(default)]
    pub opentelemetry: Option<CollectorConfig>,
    /// Zipkin v2 JSON (Zipkin's or Jaeger's collector, port 9411).
    #[serde(default)]
    pub zipkin: Option<CollectorConfig>,
}

/// Where a collector listens.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CollectorConfig {
    /// Host: a DNS name resolved when connecting, or an IP address. Istio's
    /// `namespace/host` form is accepted; the host is what is dialled.
    pub service: String,
    /// Port.
    pub port: u16,
    /// The longest `http.url` tag value (Envoy's default, 256).
    #[serde(default)]
    pub max_tag_length: Option<u32>,
}

/// One custom tag: exactly one source.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CustomTagConfig {
    /// A fixed value.
    #[serde(default)]
    pub literal: Option<LiteralTag>,
    /// A request header's value.
    #[serde(default)]
    pub header: Option<SourcedTag>,
    /// An environment variable of the proxy, read when the settings are applied.
    #[serde(default)]
    pub environment: Option<SourcedTag>,
}

/// `literal: {value}`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LiteralTag {
    /// The value.
    pub value: String,
}

/// `header: {name, defaultValue}` or `environment: {name, defaultValue}`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourcedTag {
    /// The header or variable name.
    pub name: String,
    /// The value when it is absent; without one, the tag is left out.
    #[serde(default)]
    pub default_value: Option<String>,
}

impl TracingConfig {
    /// Checks what serde cannot; `Err((field, message))` names the field under `tracing`.
    pub fn check(&self) -> Result<(), (String, String)> {
        if let Some(p) = &self.provider {
            let kinds = [("opentelemetry", &p.opentelemetry), ("zipkin", &p.zipkin)];
            let set: Vec<_> = kinds.iter().filter(|(_, c)| c.is_some()).collect();
            match set.as_slice() {
                [(kind, Some(c))] => {
                    if host_of(&c.service).is_empty() {
                        return Err((
                            format!("tracing.provider.{kind}.service"),
                            "the collector's host is required".into(),
                        ));
                    }
                    if c.port == 0 {
                        return Err((
                            format!("tracing.provider.{kind}.port"),
                            "must be 1-65535".into(),
                        ));
                    }
                }
                _ => {
                    return Err((
                        "tracing.provider".into(),
                        "needs exactly one of `opentelemetry` and `zipkin`".into(),
                    ));
                }
            }
        }
        if let Some(p) = self.random_sampling_percentage
            && !(0.0..=100.0).contains(&p)
        {
            return Err((
                "tracing.randomSamplingPercentage".into(),
                format!("{p} is not a percentage (0-100)"),
            ));
        }
        for (tag, c) in &self.custom_tags {
            let field = format!("tracing.customTags.{tag}");
            if tag.is_empty() {
                return Err((field, "a tag needs a name".into()));
            }
            let kinds = usize::from(c.literal.is_some())
                + usize::from(c.header.is_some())
                + usize::from(c.environment.is_some());
            if kinds != 1 {
                return Err((
                    field,
                    "needs exactly one of `literal`, `header` and `environment`".into(),
                ));
            }
            if let Some(h) = &c.header
                && http::HeaderName::from_bytes(h.name.as_bytes()).is_err()
            {
                return Err((
                    format!("{field}.header.name"),
                    format!("`{}` is not a header name", h.name),
                ));
            }
            if let Some(e) = &c.environment
                && e.name.is_empty()
            {
                return Err((
                    format!("{field}.environment.name"),
                    "a variable name is required".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The host of Istio's `[namespace/]host` service form.
pub fn host_of(service: &str) -> &str {
    service.rsplit_once('/').map_or(service, |(_, h)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> TracingConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn istios_shapes_parse() {
        let c = parse(
            "provider:\n  zipkin: {service: tracing/jaeger-collector.tracing, port: 9411}\n\
             randomSamplingPercentage: 25\ncustomTags:\n  tenant: {header: {name: x-tenant, defaultValue: none}}\n  \
             pod: {environment: {name: POD_NAME}}\n  cluster: {literal: {value: eu-1}}\n",
        );
        assert_eq!(c.random_sampling_percentage, Some(25.0));
        let z = c.provider.as_ref().unwrap().zipkin.as_ref().unwrap();
        assert_eq!(host_of(&z.service), "jaeger-collector.tracing");
        assert_eq!(c.custom_tags.len(), 3);
        assert_eq!(
            c.custom_tags["tenant"]
                .header
                .as_ref()
                .unwrap()
                .default_value
                .as_deref(),
            Some("none")
        );
        assert!(c.check().is_ok());
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (
                "provider: {opentelemetry: {service: a, port: 4317}, zipkin: {service: b, port: 9411}}",
                "tracing.provider",
            ),
            ("provider: {}", "tracing.provider"),
            (
                "provider: {zipkin: {service: '', port: 9411}}",
                "tracing.provider.zipkin.service",
            ),
            (
                "provider: {opentelemetry: {service: a, port: 0}}",
                "tracing.provider.opentelemetry.port",
            ),
            (
                "randomSamplingPercentage: 101",
                "tracing.randomSamplingPercentage",
            ),
            (
                "randomSamplingPercentage: -1",
                "tracing.randomSamplingPercentage",
            ),
            ("customTags: {t: {}}", "tracing.customTags.t"),
            (
                "customTags: {t: {literal: {value: a}, header: {name: b}}}",
                "tracing.customTags.t",
            ),
            (
                "customTags: {t: {header: {name: 'bad name'}}}",
                "tracing.customTags.t.header.name",
            ),
            (
                "customTags: {t: {environment: {name: ''}}}",
                "tracing.customTags.t.environment.name",
            ),
        ];
        for (yaml, field) in cases {
            let err = parse(yaml).check().unwrap_err();
            assert_eq!(err.0, field, "{yaml}: {}", err.1);
        }
    }
}
