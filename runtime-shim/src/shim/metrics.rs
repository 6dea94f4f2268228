//! The agent's cgroup v2 statistics → containerd's
//! `io.containerd.cgroups.v2.Metrics` (what `ctr task metrics` decodes).

use std::collections::HashMap;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use kata_like_protocol::agent::StatsResponse;
use kata_like_protocol::cgroups_v2::{CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat};
use protobuf::Message;

/// The type URL containerd expects.
pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

fn get(map: &HashMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

/// Converts and packs the statistics.
pub fn to_any(stats: &StatsResponse) -> Result<Any, String> {
    let cpu = CPUStat {
        usage_usec: get(&stats.cpu, "usage_usec"),
        user_usec: get(&stats.cpu, "user_usec"),
        system_usec: get(&stats.cpu, "system_usec"),
        nr_periods: get(&stats.cpu, "nr_periods"),
        nr_throttled: get(&stats.cpu, "nr_throttled"),
        throttled_usec: get(&stats.cpu, "throttled_usec"),
        ..Default::default()
    };
    let m = &stats.memory;
    let memory = MemoryStat {
        anon: get(m, "anon"),
        file: get(m, "file"),
        kernel_stack: get(m, "kernel_stack"),
        slab: get(m, "slab"),
        sock: get(m, "sock"),
        shmem: get(m, "shmem"),
        file_mapped: get(m, "file_mapped"),
        file_dirty: get(m, "file_dirty"),
        file_writeback: get(m, "file_writeback"),
        inactive_anon: get(m, "inactive_anon"),
        active_anon: get(m, "active_anon"),
        inactive_file: get(m, "inactive_file"),
        active_file: get(m, "active_file"),
        unevictable: get(m, "unevictable"),
        pgfault: get(m, "pgfault"),
        pgmajfault: get(m, "pgmajfault"),
        usage: get(m, "usage"),
        usage_limit: get(m, "limit"),
        swap_usage: get(m, "swap_usage"),
        swap_limit: get(m, "swap_limit"),
        ..Default::default()
    };
    let e = &stats.memory_events;
    let events = MemoryEvents {
        low: get(e, "low"),
        high: get(e, "high"),
        max: get(e, "max"),
        oom: get(e, "oom"),
        oom_kill: get(e, "oom_kill"),
        ..Default::default()
    };
    let metrics = Metrics {
        pids: protobuf::MessageField::some(PidsStat {
            current: stats.pids_current,
            limit: stats.pids_limit,
            ..Default::default()
        }),
        cpu: protobuf::MessageField::some(cpu),
        memory: protobuf::MessageField::some(memory),
        memory_events: protobuf::MessageField::some(events),
        ..Default::default()
    };
    let mut any = Any::new();
    any.type_url = METRICS_TYPE_URL.into();
    any.value = metrics.write_to_bytes().map_err(|e| format!("encode metrics: {e}"))?;
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_map_onto_cgroup_v2_metrics() {
        let mut stats = StatsResponse::new();
        stats.cpu.insert("usage_usec".into(), 42);
        stats.memory.insert("usage".into(), 4096);
        stats.memory.insert("limit".into(), 8192);
        stats.pids_current = 3;
        let any = to_any(&stats).expect("any");
        assert_eq!(any.type_url, METRICS_TYPE_URL);
        let back = Metrics::parse_from_bytes(&any.value).expect("decode");
        assert_eq!(back.cpu.usage_usec, 42);
        assert_eq!((back.memory.usage, back.memory.usage_limit), (4096, 8192));
        assert_eq!(back.pids.current, 3);
    }
}
