//! Generates the protobuf messages of containerd's shim bootstrap protocol
//! (protos/bootstrap.proto, copied from containerd's
//! api/runtime/bootstrap/v1, Apache-2.0): `BootstrapParams`, which
//! containerd ≥ 2.3 writes to `shim start`'s stdin, and `BootstrapResult`,
//! the reply. containerd-shim 0.10's protos do not carry them.
//!
//! The generated file starts with inner attributes and inner doc comments,
//! which `include!` rejects; they are stripped here.

use std::fs;
use std::path::PathBuf;

fn main() {
    let proto = "protos/bootstrap.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let raw_dir = out_dir.join("raw");
    fs::create_dir_all(&raw_dir).expect("create OUT_DIR/raw");
    ttrpc_codegen::Codegen::new()
        .out_dir(&raw_dir)
        .inputs([proto])
        .include("protos")
        .rust_protobuf()
        .run()
        .expect("protobuf codegen of protos/bootstrap.proto");
    let text = fs::read_to_string(raw_dir.join("bootstrap.rs")).expect("read generated file");
    let stripped: String = text
        .lines()
        .filter(|line| !line.starts_with("#![") && !line.starts_with("//!"))
        .map(|line| format!("{line}\n"))
        .collect();
    fs::write(out_dir.join("bootstrap.rs"), stripped).expect("write generated file");
}
