//! Compiles `berth/**/*.proto` with protox (pure Rust), so building the agent needs no `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["berth/agent/v1/agent.proto", "berth/controlplane/v1/control_plane.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
