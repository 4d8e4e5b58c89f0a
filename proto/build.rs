//! Compiles `berth/**/*.proto` with protox (pure Rust), so building the agent needs no `protoc`, and
//! saves the encoded descriptor set for reflection.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["berth/agent/v1/agent.proto", "berth/controlplane/v1/control_plane.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    // The encoded descriptors, for gRPC server reflection (so grpcurl works against berthd).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("berth_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
