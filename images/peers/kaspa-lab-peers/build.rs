// Generates the protowire types and the P2P service. protoc comes from a crate (protoc-bin-vendored), so the
// build needs nothing but crates.io.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_protos(&["proto/messages.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/messages.proto");
    Ok(())
}
