//! containerd's runtime options for non-runc runtimes
//! (`runtimeoptions.v1.Options { type_url = 1; config_path = 2; }`), as the
//! CRI plugin's `ConfigPath` and `ctr --runtime-config-path` send them.
//! Decoded by hand: two string fields do not justify a generated module.

use protobuf::well_known_types::any::Any;
use protobuf::CodedInputStream;

/// The `config_path` of runtime options, if any.
pub fn config_path(options: Option<&Any>) -> Result<Option<String>, String> {
    let Some(any) = options else { return Ok(None) };
    if any.value.is_empty() {
        return Ok(None);
    }
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        log::info!("ignoring runtime options of type {}", any.type_url);
        return Ok(None);
    }
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut path = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(|e| format!("runtime options: {e}"))? {
        match tag {
            // field 2, length-delimited
            0x12 => path = Some(input.read_string().map_err(|e| format!("runtime options config_path: {e}"))?),
            other => input
                .skip_field(protobuf::rt::WireType::new(other & 7).ok_or("runtime options: bad wire type")?)
                .map_err(|e| format!("runtime options: {e}"))?,
        }
    }
    Ok(path.filter(|p| !p.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_path_is_decoded() {
        let mut any = Any::new();
        any.type_url = "runtimeoptions.v1.Options".into();
        // field 1 "x", field 2 "/etc/k.toml"
        any.value = [&[0x0a, 1, b'x', 0x12, 11][..], b"/etc/k.toml"].concat();
        assert_eq!(config_path(Some(&any)).expect("ok").as_deref(), Some("/etc/k.toml"));
        any.value = vec![0x12, 50];
        assert!(config_path(Some(&any)).is_err());
        assert_eq!(config_path(None).expect("none"), None);
    }
}
