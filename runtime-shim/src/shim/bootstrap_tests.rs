//! The start request in each protocol containerd speaks, built the way
//! containerd builds it (its own BootstrapParams type and runc options).

use super::*;
use containerd_shim::protos::protobuf::EnumOrUnknown;

fn flags(id: &str, ns: &str) -> Flags {
    Flags {
        id: id.into(),
        namespace: ns.into(),
        address: "/run/containerd/containerd.sock".into(),
        action: "start".into(),
        ..Default::default()
    }
}

fn options_any(shim_cgroup: &str) -> Any {
    let mut options = Options::new();
    options.shim_cgroup = shim_cgroup.into();
    options.binary_name = "runc".into();
    let mut any = Any::new();
    any.type_url = "containerd.runc.v1.Options".into();
    any.value = options.write_to_bytes().expect("encode");
    any
}

fn params(id: &str, ns: &str) -> BootstrapParams {
    let mut p = BootstrapParams::new();
    p.instance_id = id.into();
    p.namespace = ns.into();
    p.containerd_version = "2.3.0".into();
    p.containerd_ttrpc_address = "/run/containerd/containerd.sock.ttrpc".into();
    p.containerd_grpc_address = "/run/containerd/containerd.sock".into();
    p.containerd_binary = "/usr/bin/containerd".into();
    p.log_level = EnumOrUnknown::new(LogLevel::LOG_LEVEL_DEBUG);
    let mut ext = proto::Extension::new();
    ext.value = MessageField::some(options_any("/kata-like/shims"));
    p.extensions.push(ext);
    p
}

#[test]
fn containerd_2_3_bootstrap_params_are_understood_and_answered_with_a_result() {
    let stdin = params("c1", "k8s.io").write_to_bytes().expect("encode");
    let req = StartRequest::parse(&flags("c1", "k8s.io"), None, &stdin).expect("bootstrap start");
    assert_eq!(req.protocol, Protocol::Bootstrap);
    assert_eq!(req.ttrpc_address, "/run/containerd/containerd.sock.ttrpc", "no TTRPC_ADDRESS env needed");
    assert!(req.debug, "log level DEBUG turns debug logging on");
    assert_eq!(req.options.as_ref().map(|o| o.shim_cgroup.as_str()), Some("/kata-like/shims"));
    assert_eq!(req.socket_dir, None);

    let address = req.socket_address("c1");
    let reply = req.reply(&address).expect("reply");
    let result = BootstrapResult::parse_from_bytes(&reply).expect("a BootstrapResult");
    assert_eq!((result.version, result.address.as_str(), result.protocol.as_str()), (2, address.as_str(), "ttrpc"));
}

#[test]
fn the_socket_goes_where_containerd_looks_for_it() {
    let legacy = StartRequest::parse(&flags("c1", "default"), Some("/ttrpc".into()), &[]).expect("legacy");
    // The same name the containerd-shim crate (and containerd) derive.
    assert_eq!(
        legacy.socket_address("pod"),
        containerd_shim::socket_address("/run/containerd/containerd.sock", "default", "pod")
    );
    let mut p = params("c1", "default");
    p.socket_dir = Some("/run/k/s/".into());
    let req = StartRequest::parse(&flags("c1", "default"), None, &p.write_to_bytes().expect("encode")).expect("ok");
    let address = req.socket_address("pod");
    let hash = legacy.socket_address("pod").rsplit('/').next().map(str::to_string).expect("hash");
    assert_eq!(address, format!("unix:///run/k/s/{hash}"), "in the directory containerd named");
}

#[test]
fn legacy_starts_take_runtime_options_or_nothing() {
    let empty = StartRequest::parse(&flags("c1", "default"), Some("/t".into()), &[]).expect("nothing on stdin");
    assert_eq!((empty.protocol, empty.options.is_none()), (Protocol::Legacy, true));
    let stdin = options_any("/shims").write_to_bytes().expect("encode");
    let with = StartRequest::parse(&flags("c1", "default"), Some("/t".into()), &stdin).expect("runc options");
    assert_eq!(with.protocol, Protocol::Legacy, "runc options are not BootstrapParams");
    assert_eq!(with.options.as_ref().map(|o| o.shim_cgroup.as_str()), Some("/shims"));
    assert_eq!(with.reply("unix:///run/containerd/s/x").expect("reply"), b"unix:///run/containerd/s/x");
}

#[test]
fn bad_start_input_is_refused_naming_what_is_wrong() {
    let other = params("c2", "default").write_to_bytes().expect("encode");
    let err = StartRequest::parse(&flags("c1", "default"), None, &other).expect_err("another instance");
    assert!(err.to_string().contains("\"c2\"") && err.to_string().contains("-id \"c1\""), "{err}");

    let mut p = params("c1", "default");
    p.containerd_ttrpc_address.clear();
    let err =
        StartRequest::parse(&flags("c1", "default"), None, &p.write_to_bytes().expect("e")).expect_err("no ttrpc");
    assert!(err.to_string().contains("containerd_ttrpc_address"), "{err}");

    let err = StartRequest::parse(&flags("c1", "default"), None, &[]).expect_err("legacy without TTRPC_ADDRESS");
    assert!(err.to_string().contains("TTRPC_ADDRESS"), "{err}");

    let err = StartRequest::parse(&flags("c1", "default"), Some("/t".into()), &[0xff, 0xff, 0xff]).expect_err("junk");
    assert!(err.to_string().contains("neither"), "{err}");
}

#[test]
fn runtime_info_names_us_and_carries_the_features_document() {
    let info = runtime_info("io.containerd.kata-like.v2");
    let bytes = info.write_to_bytes().expect("encode");
    let back = RuntimeInfo::parse_from_bytes(&bytes).expect("containerd's RuntimeInfo type");
    assert_eq!(back.name, "io.containerd.kata-like.v2");
    assert_eq!(back.version.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(back.features.type_url, FEATURES_TYPE_URL);
    let doc: serde_json::Value = serde_json::from_slice(&back.features.value).expect("features JSON");
    assert_eq!(doc["ociVersionMin"], "1.0.0");
    assert!(doc["linux"]["namespaces"].as_array().is_some_and(|n| n.contains(&"pid".into())));
    assert!(doc["annotations"]["io.kata-like.mount-types"].as_str().is_some_and(|t| t.contains("bind")));
}
