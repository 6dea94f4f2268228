//! The VMM's control socket (`--api-sock`): pause, resume, snapshot.
//!
//! One JSON request per connection, one JSON line back:
//!
//! ```text
//! {"action":"pause"}                      -> {"ok":true,"state":"paused"}
//! {"action":"snapshot","path":"/dir"}     -> {"ok":true,"state":"paused","ram_bytes":..,"data_bytes":..,"ms":..}
//! {"action":"resume"}                     -> {"ok":true,"state":"running"}
//! {"action":"status"}                     -> {"ok":true,"state":"running"}
//! {"action":"stats"}                      -> {"ok":true,"state":"running","stats":{"exits":..,"io_exits":..,..}}
//! anything else                           -> {"ok":false,"error":"..."}
//! ```
//!
//! The VMM serves these (its `api` module); the runtime and the tests call
//! [`call`]. Hand-written rather than Firecracker's HTTP API: a few verbs on
//! a local socket need no HTTP stack, and serde_json is already here.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A control request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Stop the vCPUs.
    Pause,
    /// Let them run again.
    Resume,
    /// Pause (if running) and write a snapshot into the directory `path`
    /// (created if missing).
    Snapshot {
        /// The snapshot directory.
        path: PathBuf,
    },
    /// Report whether the VM runs.
    Status,
    /// Report KVM's counters (exits by kind, interrupts injected, ...)
    /// summed over the vCPUs.
    Stats,
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `running` or `paused` after the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Snapshot: guest RAM size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_bytes: Option<u64>,
    /// Snapshot: bytes of RAM data written (the rest is holes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_bytes: Option<u64>,
    /// Snapshot: milliseconds from request to files written, pause included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    /// Stats: KVM's scalar statistics by name, summed over the vCPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<std::collections::BTreeMap<String, u64>>,
}

/// Sends one request to a VMM's control socket and returns its answer
/// (for the runtime and the tests).
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(answer.trim()).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad answer {:?}: {e}", answer.trim()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let snap: Request = serde_json::from_str(r#"{"action":"snapshot","path":"/x"}"#).expect("parses");
        assert_eq!(snap, Request::Snapshot { path: "/x".into() });
        assert_eq!(serde_json::to_string(&Request::Pause).expect("json"), r#"{"action":"pause"}"#);
        assert_eq!(serde_json::from_str::<Request>(r#"{"action":"stats"}"#).expect("parses"), Request::Stats);
        assert!(serde_json::from_str::<Request>(r#"{"action":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"action":"snapshot"}"#).is_err(), "path is required");
    }
}
