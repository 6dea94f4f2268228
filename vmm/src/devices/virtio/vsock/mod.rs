//! virtio-vsock, implemented in userspace (no vhost-vsock on our hosts), with
//! Firecracker's hybrid vsock backend:
//!
//! * host → guest: a host process connects to the Unix socket `uds_path`,
//!   writes `CONNECT <port>\n` and reads `OK <host port>\n` once the guest
//!   accepted; the Unix stream then carries the vsock stream.
//! * guest → host: a guest connection to host port P is connected to the Unix
//!   socket `<uds_path>_P`.
//!
//! Layout: [`device`] (virtio device, queue processing), [`event_handler`]
//! (event-manager wiring), [`packet`] (packets in descriptor chains), [`muxer`] (connections, the listener, the RX
//! queue of pending packets), [`connection`] (one stream's state and credit
//! flow control), [`metrics`].

pub mod connection;
pub mod device;
pub mod event_handler;
pub mod metrics;
pub mod muxer;
pub mod packet;

pub use device::Vsock;
pub use metrics::VsockMetrics;
pub use muxer::HybridVsockMuxer;

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Largest payload we read from or write to one packet.
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// Stream sockets are the only type supported.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations (virtio 1.2, 5.10.6).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset / refused.
    pub const RST: u16 = 3;
    /// Orderly shutdown of one or both directions.
    pub const SHUTDOWN: u16 = 4;
    /// Stream data.
    pub const RW: u16 = 5;
    /// Credit information only.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Ask the peer for credit information.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A vsock packet header as plain data, decoupled from guest memory so the
/// muxer can be exercised without queues.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PktHeader {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed (forwarded) so far.
    pub fwd_cnt: u32,
}
