//! Generates the Rust types and tonic services from `proto/` at build time, with protox (a
//! pure-Rust protobuf compiler), so no system `protoc` is needed.

const PROTOS: &[&str] = &[
    "proto/google/rpc/status.proto",
    "proto/envoy/service/discovery/v3/discovery.proto",
    "proto/meshlite/v1/resources.proto",
    "proto/meshlite/v1/ca.proto",
    "proto/envoy/service/auth/v3/external_auth.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    // Type names give every message `prost::Name`, so type URLs come from the generated code.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");
    // Maps as BTreeMaps: encoding follows key order, so the same content always encodes to
    // the same bytes and a resource's content-hash version changes only when it does.
    config.btree_map(["."]);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
