//! Compiles `outrider/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["outrider/v1/control.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    // Config documents (up to 1 MiB each) as `Bytes`, so that the one snapshot a
    // service's sidecars share is cloned by reference, not copied per send.
    tonic_prost_build::configure()
        .bytes(".outrider.v1.ConfigDocument.content")
        // A secret's value never reaches a log through `{:?}`: its Debug is written
        // by hand in `src/lib.rs` (name, size, revision).
        .skip_debug([".outrider.v1.Secret"])
        // Smaller first buffers per stream; see `src/codec.rs`.
        .codec_path("crate::codec::StreamCodec")
        .compile_fds(fds)?;
    Ok(())
}
