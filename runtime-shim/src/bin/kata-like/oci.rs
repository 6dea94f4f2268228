//! The runc-compatible commands (runc's names, flags and exit statuses:
//! 0, or 1 with the error on stderr and in `--log`), over
//! `kata_like_runtime::standalone`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use kata_like_runtime::standalone::{self, CreateArgs, ExecArgs, ListFormat, Options, UpdateArgs};

#[derive(Debug, Subcommand)]
pub enum OciCommand {
    /// Create a container (its microVM and the container in it, not its
    /// process); the PID written to --pid-file is its host process.
    Create {
        #[command(flatten)]
        create: CreateFlags,
        /// Container ID.
        id: String,
    },
    /// Run a created container's process.
    Start {
        /// Container ID.
        id: String,
    },
    /// Create and start a container; in the foreground, wait for it and
    /// exit with its status.
    Run {
        #[command(flatten)]
        create: CreateFlags,
        /// Return once the container runs, leaving it in the background.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Keep the container's state after it exits (runc's --keep).
        #[arg(long)]
        keep: bool,
        /// Container ID.
        id: String,
    },
    /// Print a container's OCI state as JSON.
    State {
        /// Container ID.
        id: String,
    },
    /// Send a signal to a container's init (or all its processes).
    Kill {
        /// Send it to every process of the container.
        #[arg(long, short = 'a')]
        all: bool,
        /// Container ID.
        id: String,
        /// Signal name or number.
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Remove a stopped or created container (--force: kill it first).
    Delete {
        /// Kill a running container first.
        #[arg(long, short = 'f')]
        force: bool,
        /// Container ID.
        id: String,
    },
    /// Run a new process in a running container.
    Exec {
        /// process.json (OCI process) to run instead of the arguments.
        #[arg(long, short = 'p')]
        process: Option<PathBuf>,
        /// Allocate a terminal.
        #[arg(long, short = 't')]
        tty: bool,
        /// Unix socket to send the terminal's pty master to.
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Return once the process runs.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Write the process's host PID here.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Working directory.
        #[arg(long)]
        cwd: Option<String>,
        /// KEY=VALUE (repeatable).
        #[arg(long, short = 'e')]
        env: Vec<String>,
        /// UID[:GID].
        #[arg(long, short = 'u')]
        user: Option<String>,
        /// Extra group (repeatable).
        #[arg(long, short = 'g')]
        additional_gids: Vec<u32>,
        /// Set no_new_privileges.
        #[arg(long)]
        no_new_privs: bool,
        /// Pass N more descriptors (refused: a VM cannot get host descriptors).
        #[arg(long, default_value_t = 0)]
        preserve_fds: u32,
        /// Accepted for runc compatibility; the guest applies the spec's.
        #[arg(long, hide = true)]
        cap: Vec<String>,
        /// Accepted for runc compatibility (no AppArmor in the guest).
        #[arg(long, hide = true)]
        apparmor: Option<String>,
        /// Accepted for runc compatibility (no SELinux in the guest).
        #[arg(long, hide = true)]
        process_label: Option<String>,
        /// Container ID.
        id: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The container's host processes (its own and its execs').
    Ps {
        /// table or json.
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        /// Container ID.
        id: String,
        /// Options for ps(1) (table format).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Freeze a container's processes.
    Pause {
        /// Container ID.
        id: String,
    },
    /// Thaw a paused container.
    Resume {
        /// Container ID.
        id: String,
    },
    /// Change a container's resource limits.
    Update {
        /// LinuxResources JSON file ("-": stdin).
        #[arg(long, short = 'r')]
        resources: Option<PathBuf>,
        /// Memory limit (e.g. 64m).
        #[arg(long, short = 'm')]
        memory: Option<String>,
        /// Memory soft limit.
        #[arg(long)]
        memory_reservation: Option<String>,
        /// Memory plus swap limit.
        #[arg(long)]
        memory_swap: Option<String>,
        /// CPU shares.
        #[arg(long)]
        cpu_shares: Option<u64>,
        /// CFS quota in microseconds.
        #[arg(long, allow_hyphen_values = true)]
        cpu_quota: Option<i64>,
        /// CFS period in microseconds.
        #[arg(long)]
        cpu_period: Option<u64>,
        /// CPUs to run on.
        #[arg(long)]
        cpuset_cpus: Option<String>,
        /// Memory nodes.
        #[arg(long)]
        cpuset_mems: Option<String>,
        /// Maximum tasks.
        #[arg(long, allow_hyphen_values = true)]
        pids_limit: Option<i64>,
        /// Block I/O weight.
        #[arg(long)]
        blkio_weight: Option<u16>,
        /// Container ID.
        id: String,
    },
    /// List the containers.
    #[command(alias = "ls")]
    List {
        /// table or json.
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        /// IDs only.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Container statistics (--stats: once) as JSON events.
    Events {
        /// One stats event, then exit.
        #[arg(long)]
        stats: bool,
        /// Between stats events.
        #[arg(long, default_value = "5s")]
        interval: String,
        /// Container ID.
        id: String,
    },
    /// The runtime-spec features document.
    Features,
    /// The container's host process (started by create and run -d).
    #[command(name = "_monitor", hide = true)]
    Monitor {
        /// Start at once.
        #[arg(long)]
        start: bool,
        /// Container ID.
        id: String,
    },
    /// A detached exec's host process.
    #[command(name = "_exec", hide = true)]
    ExecMonitor {
        /// Container ID.
        id: String,
        /// The guest's exec ID.
        exec_id: String,
    },
}

/// `create`'s and `run`'s flags.
#[derive(Debug, clap::Args)]
pub struct CreateFlags {
    /// The bundle directory (config.json and the rootfs).
    #[arg(long, short = 'b', default_value = ".")]
    bundle: PathBuf,
    /// Write the container's host PID here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Unix socket to send the terminal's pty master to.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Pass N more descriptors (refused: a VM cannot get host descriptors).
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for runc compatibility: the guest has its own root.
    #[arg(long)]
    no_pivot: bool,
    /// Accepted for runc compatibility: the guest has its own keyrings.
    #[arg(long)]
    no_new_keyring: bool,
}

impl CreateFlags {
    fn args(self) -> CreateArgs {
        CreateArgs {
            bundle: self.bundle,
            pid_file: self.pid_file,
            console_socket: self.console_socket,
            preserve_fds: self.preserve_fds,
        }
    }
}

/// A duration as runc takes it: "5s", "500ms", "1m", or seconds.
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| anyhow::anyhow!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => anyhow::bail!("invalid duration {s:?}: use ms, s, m or h"),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| anyhow::anyhow!("invalid duration {s:?}"))
}

fn ok(_: ()) -> ExitCode {
    ExitCode::SUCCESS
}

/// Runs one runc-compatible command. Commands that own a process's life
/// (`run` in the foreground, `exec` in the foreground, the monitors) end
/// the process like their guest process ended.
pub fn run(opts: &Options, command: OciCommand) -> anyhow::Result<ExitCode> {
    use standalone as s;
    Ok(match command {
        OciCommand::Create { create, id } => s::create(opts, &id, &create.args()).map(ok)?,
        OciCommand::Start { id } => s::start(opts, &id).map(ok)?,
        OciCommand::Run { create, detach, keep, id } => {
            if keep {
                anyhow::bail!(
                    "--keep is not supported: a foreground run's state goes when it exits (use create and start)"
                );
            }
            let status = s::run(opts, &id, &create.args(), detach)?;
            if detach {
                ExitCode::SUCCESS
            } else {
                s::exit_like(status)
            }
        }
        OciCommand::State { id } => {
            println!("{}", serde_json::to_string_pretty(&s::state(opts, &id)?)?);
            ExitCode::SUCCESS
        }
        OciCommand::Kill { all, id, signal } => s::kill(opts, &id, s::parse_signal(&signal)?, all).map(ok)?,
        OciCommand::Delete { force, id } => s::delete(opts, &id, force).map(ok)?,
        OciCommand::Exec {
            process,
            tty,
            console_socket,
            detach,
            pid_file,
            cwd,
            env,
            user,
            additional_gids,
            no_new_privs,
            preserve_fds,
            id,
            args,
            ..
        } => {
            let exec = ExecArgs {
                process,
                tty,
                console_socket,
                detach,
                pid_file,
                cwd,
                env,
                user,
                additional_gids,
                no_new_privs,
                preserve_fds,
                args,
            };
            let status = s::exec(opts, &id, &exec)?;
            if detach {
                ExitCode::SUCCESS
            } else {
                s::exit_like(status)
            }
        }
        OciCommand::Ps { format, id, ps_args } => {
            let json = match format.as_str() {
                "json" => true,
                "table" => false,
                other => anyhow::bail!("invalid --format {other:?}: use table or json"),
            };
            println!("{}", s::ps(opts, &id, json, &ps_args)?);
            ExitCode::SUCCESS
        }
        OciCommand::Pause { id } => s::pause(opts, &id).map(ok)?,
        OciCommand::Resume { id } => s::resume(opts, &id).map(ok)?,
        OciCommand::Update {
            resources,
            memory,
            memory_reservation,
            memory_swap,
            cpu_shares,
            cpu_quota,
            cpu_period,
            cpuset_cpus,
            cpuset_mems,
            pids_limit,
            blkio_weight,
            id,
        } => {
            let args = UpdateArgs {
                resources,
                memory,
                memory_reservation,
                memory_swap,
                cpu_shares,
                cpu_quota,
                cpu_period,
                cpuset_cpus,
                cpuset_mems,
                pids_limit,
                blkio_weight,
            };
            s::update(opts, &id, &args).map(ok)?
        }
        OciCommand::List { format, quiet } => {
            let format = match (quiet, format.as_str()) {
                (true, _) => ListFormat::Quiet,
                (false, "json") => ListFormat::Json,
                (false, "table") => ListFormat::Table,
                (false, other) => anyhow::bail!("invalid --format {other:?}: use table or json"),
            };
            let out = s::list(opts, format)?;
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        OciCommand::Events { stats, interval, id } => {
            s::events(opts, &id, stats, parse_duration(&interval)?).map(ok)?
        }
        OciCommand::Features => {
            println!("{}", serde_json::to_string_pretty(&s::features())?);
            ExitCode::SUCCESS
        }
        OciCommand::Monitor { start, id } => {
            let status = s::monitor(opts, &id, start, s::notify_pipe())?;
            s::exit_like(status)
        }
        OciCommand::ExecMonitor { id, exec_id } => {
            let status = s::exec_monitor(opts, &id, &exec_id, s::notify_pipe())?;
            s::exit_like(status)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_runc_takes_them() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
