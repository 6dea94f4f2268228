//! The control path keeps every byte (issue 16): agent requests and
//! responses of every size, across the page, packet, credit and frame
//! boundaries of each layer they cross (the shim's ttrpc client, the hybrid
//! vsock handshake, the VMM's vsock device, the guest kernel's vsock
//! transport, the agent's ttrpc server and its decode check), arrive byte
//! for byte; a message above the protocol's limit is refused with its size
//! and the limit named.
//!
//! One sandbox restored from the suite's VM template serves every case.

use std::time::{Duration, Instant};

use kata_like_protocol::agent::EchoRequest;
use kata_like_protocol::echo::{checksum, echo_pattern, first_difference};
use kata_like_protocol::{ttrpc, AgentClient, MAX_MESSAGE_BYTES};
use protobuf::Message;
use test_infra::sandbox::TestSandbox;
use test_infra::vm_test;
use ttrpc::proto::Codec;

const SERVICE: &str = "katalike.agent.v1.AgentService";
const PAGE: usize = 4096;

/// Sends `size` bytes of pattern and asks for `reply_size` bytes back (0:
/// the request's own bytes); says what was damaged, in which direction.
fn echo(client: &AgentClient, size: usize, reply_size: usize) -> Result<(), String> {
    let seed = (size as u64) << 32 | reply_size as u64;
    let data = echo_pattern(seed, size);
    let resp = client
        .echo(data.clone(), reply_size as u32, seed)
        .map_err(|e| format!("request {size} B, reply {reply_size} B: {e}"))?;
    if resp.received_len as usize != size || resp.received_crc32 != checksum(&data) {
        return Err(format!(
            "request of {size} B arrived damaged: {} B, CRC {:08x} instead of {:08x}",
            resp.received_len,
            resp.received_crc32,
            checksum(&data)
        ));
    }
    let expected = if reply_size == 0 { data } else { echo_pattern(seed, reply_size) };
    match first_difference(&expected, &resp.data) {
        None => Ok(()),
        Some(diff) => Err(format!("reply to a {size} B request ({reply_size} B asked) arrived damaged: {diff}")),
    }
}

/// The ttrpc frame length of an Echo request carrying `size` bytes and
/// `seed`, as the client encodes it (same service, method and deadline).
fn request_frame_len(size: usize, seed: u64, timeout: Duration) -> usize {
    let mut echo = EchoRequest::new();
    echo.data = vec![0xa5; size];
    echo.seed = seed;
    let mut req = ttrpc::Request::new();
    req.service = SERVICE.into();
    req.method = "Echo".into();
    req.timeout_nano = timeout.as_nanos() as i64;
    req.payload = echo.write_to_bytes().expect("encode");
    req.size() as usize
}

/// The largest `data` an Echo request can carry within the frame limit
/// (with the longest seed, so any seed fits).
fn max_request_data(timeout: Duration) -> usize {
    let (mut lo, mut hi) = (0, MAX_MESSAGE_BYTES);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if request_frame_len(mid, u64::MAX, timeout) <= MAX_MESSAGE_BYTES {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// Sizes around every boundary a message crosses: pages (the guest's 4 KiB
/// RX buffers, ttrpc's 4 KiB coalesced prefix) up to ten pages, where the
/// reported damage began; the vsock device's 64 KiB packet limit, the
/// 256 KiB credit window, and the frame limit. The full sweep of every size
/// (`KATA_LIKE_RPC_DENSE=0..N`) takes hours here: run it by hand.
fn boundary_sizes(max: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut around = |centre: usize, spread: usize| {
        sizes.extend((centre.saturating_sub(spread)..=centre + spread).filter(|s| *s <= max));
    };
    for pages in 1..=10 {
        around(pages * PAGE, 6);
    }
    for centre in [64 << 10, 128 << 10, 256 << 10] {
        around(centre, 2);
    }
    for size in [(1 << 20) - 1, 1 << 20, max - 1, max] {
        around(size, 0);
    }
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Every request size in this range is sent: by default the small sizes
/// (headers and varints change length there); `KATA_LIKE_RPC_DENSE=A..B`
/// for another.
fn dense_range() -> std::ops::Range<usize> {
    std::env::var("KATA_LIKE_RPC_DENSE")
        .ok()
        .and_then(|v| {
            let (a, b) = v.split_once("..")?;
            Some(a.parse().ok()?..b.parse().ok()?)
        })
        .unwrap_or(0..300)
}

#[test]
#[ignore = "restores a microVM; run with scripts/test.sh or `-- --ignored`"]
fn agent_messages_of_every_size_arrive_byte_for_byte() {
    const TEST: &str = "agent_messages_of_every_size_arrive_byte_for_byte";
    let Some(artifacts) = vm_test(TEST) else { return };
    let sb = TestSandbox::start(&artifacts, "rpc-integrity").unwrap_or_else(|e| panic!("{TEST}: {e}"));
    let client = sb.sandbox.client().clone();
    let timeout = Duration::from_secs(sb.config.rpc_timeout_secs);
    let max = max_request_data(timeout);
    let mut failures = Vec::new();
    let mut calls = 0;
    let mut run = |what: &str, cases: &mut dyn Iterator<Item = (usize, usize)>| {
        let started = Instant::now();
        let before = calls;
        for (size, reply) in cases {
            calls += 1;
            if let Err(e) = echo(&client, size, reply) {
                eprintln!("DAMAGED: {e}");
                failures.push(e);
            }
        }
        eprintln!("{what}: {} calls in {:.1?}", calls - before, started.elapsed());
    };

    // Every small request size, echoed back.
    let dense = dense_range();
    run("dense requests", &mut dense.map(|s| (s, 0)));
    if std::env::var_os("KATA_LIKE_RPC_DENSE_ONLY").is_some() {
        assert!(failures.is_empty(), "{} of {calls} messages arrived damaged", failures.len());
        return;
    }
    // Around every boundary up to the largest request the frame limit takes.
    let sizes = boundary_sizes(max);
    run("boundary requests", &mut sizes.iter().map(|s| (*s, 0)));
    // Responses of those sizes to a small request.
    run("boundary replies", &mut sizes.iter().filter(|s| **s > 0).map(|s| (16, *s)));
    // Above the limit: refused before sending, naming the size and limit.
    let too_big = max + 1;
    let err = client.echo(vec![0; too_big], 0, u64::MAX).expect_err("a request over the frame limit is refused");
    let text = err.to_string();
    let frame = request_frame_len(too_big, u64::MAX, timeout);
    assert!(
        text.contains(&frame.to_string()) && text.contains(&MAX_MESSAGE_BYTES.to_string()),
        "the error names the size ({frame}) and the limit ({MAX_MESSAGE_BYTES}): {text}"
    );
    // Replies above the limit: the agent refuses to build them.
    let err = client.echo(vec![1; 16], (MAX_MESSAGE_BYTES + 1) as u32, 2).expect_err("an oversized reply is refused");
    assert!(err.to_string().contains(&MAX_MESSAGE_BYTES.to_string()), "names the limit: {err}");
    // And the connection still works after both.
    if let Err(e) = echo(&client, 5000, 7000) {
        failures.push(format!("after the refusals: {e}"));
    }
    for failure in failures.iter().take(20) {
        eprintln!("{failure}");
    }
    assert!(failures.is_empty(), "{} of {calls} messages arrived damaged; first: {}", failures.len(), failures[0]);
}
