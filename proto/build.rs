//! Generates the stoa.v1 types with protox (a protobuf compiler in Rust), so
//! building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["stoa/v1/stoa.proto"], ["."])?;
    let descriptor_path = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("stoa_v1_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().codec_path("crate::codec::StoaCodec").compile_fds(fds)?;
    println!("cargo:rerun-if-changed=stoa/v1/stoa.proto");
    Ok(())
}
