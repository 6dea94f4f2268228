//! Clients of containerd's CRI streaming server (what `kubectl exec -it`,
//! `attach` and `port-forward` reach through kubelet): the URL from
//! Exec/Attach/PortForward, opened as a WebSocket with the
//! `v4.channel.k8s.io` subprotocol, where every message starts with a
//! channel byte (exec/attach: 0 stdin, 1 stdout, 2 stderr, 3 error as a
//! JSON Status, 4 resize; port-forward: 0 data and 1 error per port, each
//! first carrying the port number).

use std::net::TcpStream;
use std::time::Duration;

use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

/// The subprotocol whose error channel carries a JSON Status.
const PROTOCOL: &str = "v4.channel.k8s.io";

/// An open streaming session.
#[derive(Debug)]
pub struct Session {
    ws: WebSocket<TcpStream>,
}

/// What an exec or attach session produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Channel 1.
    pub stdout: String,
    /// Channel 2.
    pub stderr: String,
    /// Channel 3: the final Status (JSON), if the server sent one.
    pub status: String,
}

impl Outcome {
    /// The exit code in the Status: 0 for Success, the `ExitCode` cause for
    /// NonZeroExitCode, None otherwise.
    pub fn exit_code(&self) -> Option<i32> {
        let status: serde_json::Value = serde_json::from_str(&self.status).ok()?;
        if status["status"] == "Success" {
            return Some(0);
        }
        status["details"]["causes"]
            .as_array()?
            .iter()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str()?.parse().ok())
    }
}

impl Session {
    /// Opens `url` (`http://host:port/path`, with `query` appended).
    pub fn open(url: &str, query: &str) -> Result<Session, String> {
        let ws_url = format!("{}{query}", url.replacen("http://", "ws://", 1));
        let authority = ws_url.trim_start_matches("ws://").split('/').next().unwrap_or_default().to_string();
        let tcp = TcpStream::connect(&authority).map_err(|e| format!("connect {authority}: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(300))).map_err(|e| e.to_string())?;
        let mut request = ws_url.as_str().into_client_request().map_err(|e| format!("{ws_url}: {e}"))?;
        let headers = request.headers_mut();
        headers.insert("Sec-WebSocket-Protocol", PROTOCOL.parse().map_err(|e| format!("{e}"))?);
        headers.insert("Origin", format!("http://{authority}").parse().map_err(|e| format!("{e}"))?);
        let (ws, _) = tungstenite::client::client(request, tcp).map_err(|e| format!("websocket {ws_url}: {e}"))?;
        Ok(Session { ws })
    }

    /// Sends `data` on `channel`.
    pub fn send(&mut self, channel: u8, data: &[u8]) -> Result<(), String> {
        let mut frame = Vec::with_capacity(data.len() + 1);
        frame.push(channel);
        frame.extend_from_slice(data);
        self.ws.send(Message::Binary(frame.into())).map_err(|e| format!("send: {e}"))
    }

    /// The next data message: (channel, payload); None when the server
    /// closed the session.
    pub fn recv(&mut self) -> Result<Option<(u8, Vec<u8>)>, String> {
        loop {
            match self.ws.read() {
                Ok(Message::Binary(b)) if !b.is_empty() => return Ok(Some((b[0], b[1..].to_vec()))),
                Ok(Message::Text(t)) if !t.is_empty() => {
                    return Ok(Some((t.as_bytes()[0], t.as_bytes()[1..].to_vec())));
                }
                Ok(Message::Close(_)) => return Ok(None),
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return Ok(None),
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(format!("receive: {e}")),
            }
        }
    }

    /// Reads `channel` until its data contains `needle` (or the session
    /// closes); what was read.
    pub fn read_until(&mut self, channel: u8, needle: &str) -> Result<String, String> {
        let mut seen = String::new();
        while !seen.contains(needle) {
            match self.recv()? {
                Some((c, data)) if c == channel => seen.push_str(&String::from_utf8_lossy(&data)),
                Some(_) => {}
                None => break,
            }
        }
        Ok(seen)
    }

    /// Collects stdout, stderr and the status until the server closes.
    pub fn outcome(mut self) -> Result<Outcome, String> {
        let mut out = Outcome::default();
        while let Some((channel, data)) = self.recv()? {
            let text = String::from_utf8_lossy(&data);
            match channel {
                1 => out.stdout.push_str(&text),
                2 => out.stderr.push_str(&text),
                3 => out.status.push_str(&text),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Port-forward: reads the port announcements on the data and error
    /// channels, sends `request` and returns all data until the server
    /// closes, which it does when the pod side closes (or the error
    /// channel's message, as an error).
    pub fn forward(mut self, port: u16, request: &[u8]) -> Result<Vec<u8>, String> {
        let mut announced = 0;
        while announced < 2 {
            let (channel, data) = self.recv()?.ok_or("closed before announcing the port")?;
            if data.len() != 2 || u16::from_le_bytes([data[0], data[1]]) != port {
                return Err(format!("channel {channel}: expected port {port}, got {data:?}"));
            }
            announced += 1;
        }
        self.send(0, request)?;
        let mut reply = Vec::new();
        while let Some((channel, data)) = self.recv()? {
            match channel {
                0 => reply.extend_from_slice(&data),
                1 if !data.is_empty() => return Err(String::from_utf8_lossy(&data).into_owned()),
                _ => {}
            }
        }
        Ok(reply)
    }
}
