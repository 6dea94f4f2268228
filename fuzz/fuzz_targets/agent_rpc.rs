//! What the agent decodes and checks before acting on a request: the first
//! byte picks the method, the rest is its payload; requests that carry OCI
//! JSON have it checked as the agent does (kata_like_protocol::checks).
#![no_main]

use kata_like_protocol::agent::{CreateContainerRequest, ExecProcessRequest};
use kata_like_protocol::checks;
use protobuf::Message;

const METHODS: &[&str] = &[
    "Health",
    "RunProcess",
    "Shutdown",
    "SetupSandbox",
    "Restored",
    "CreateContainer",
    "ExecProcess",
    "SignalProcess",
    "ResizeTty",
    "UpdateContainer",
    "StartContainer",
    "WaitProcess",
    "GetOomEvent",
    "ConfigureNetwork",
    "NoSuchMethod",
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else { return };
    let method = METHODS[usize::from(pick) % METHODS.len()];
    let Some(decode) = checks::request_decoder(method) else { return };
    if decode(payload).is_err() {
        return;
    }
    match method {
        "CreateContainer" => {
            if let Ok(req) = CreateContainerRequest::parse_from_bytes(payload) {
                let _ = checks::oci_spec(&req.spec_json);
            }
        }
        "ExecProcess" => {
            if let Ok(req) = ExecProcessRequest::parse_from_bytes(payload) {
                let _ = checks::oci_process(&req.process_json);
            }
        }
        _ => {}
    }
    // The same bytes as a whole spec, as `config.json` is read.
    let _ = checks::oci_spec(payload);
});
