//! Generates the protobuf messages and ttrpc service stubs from protos/.
//!
//! The generated files start with inner attributes and inner doc comments,
//! which `include!` rejects; they are stripped here and the crate applies the same
//! allowances on the modules that include the files.

use std::fs;
use std::path::PathBuf;

fn main() {
    let protos = ["protos/agent.proto", "protos/cgroups_v2.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let raw_dir = out_dir.join("raw");
    fs::create_dir_all(&raw_dir).expect("create OUT_DIR/raw");
    ttrpc_codegen::Codegen::new()
        .out_dir(&raw_dir)
        .inputs(protos)
        .include("protos")
        .rust_protobuf()
        .run()
        .expect("ttrpc codegen of protos/agent.proto");

    for name in ["agent.rs", "agent_ttrpc.rs", "cgroups_v2.rs"] {
        let text = fs::read_to_string(raw_dir.join(name)).expect("read generated file");
        let stripped: String = text
            .lines()
            .filter(|line| !line.starts_with("#![") && !line.starts_with("//!"))
            .map(|line| format!("{line}\n"))
            .collect();
        fs::write(out_dir.join(name), stripped).expect("write generated file");
    }
}
