//! One core operation per container lifecycle step. Every front end
//! creates, starts, execs into, waits for and removes containers through
//! these, so the steps and their undoing exist once.

use std::path::Path;

use kata_like_protocol::agent::{CreateContainerRequest, WaitProcessResponse};
use kata_like_protocol::INIT_EXEC_ID;

use super::error::CoreError;
use super::io::{ProcessIo, StdioPaths};
use super::spec::ContainerSpec;
use super::{pod, rootfs, volumes, Sandbox};

impl Sandbox {
    /// Adds container `id` to the sandbox: binds `rootfs` (a host
    /// directory) and the spec's host mounts into the shared directory,
    /// connects its stdio as `stdio` says and creates it in the guest.
    /// Returns its guest PID and its I/O. On failure everything shared for
    /// it is undone.
    pub fn add_container(
        &self,
        id: &str,
        spec: &ContainerSpec,
        rootfs: &Path,
        stdio: &StdioPaths,
    ) -> Result<(u32, ProcessIo), CoreError> {
        let added = (|| {
            let rel = rootfs::share_rootfs(&self.shared, id, rootfs).map_err(CoreError::Failed)?;
            let mut guest = spec.spec.clone();
            if spec.kind == pod::Kind::PodContainer {
                pod::merge_pod_sysctls(&mut guest, &self.pod_sysctls);
            }
            let storages = volumes::share_mounts(&mut guest, &self.shared, id).map_err(CoreError::Invalid)?;
            let io = ProcessIo::connect(self.link.uds(), id, INIT_EXEC_ID, stdio).map_err(CoreError::Failed)?;
            let mut req = CreateContainerRequest::new();
            req.container_id = id.to_string();
            req.spec_json = serde_json::to_vec(&guest).map_err(CoreError::failed)?;
            req.rootfs = rel;
            req.storages = storages;
            req.stdio = protobuf::MessageField::some(stdio.agent_stdio());
            let pid = self.link.client().create_container(&req).map_err(CoreError::Agent)?;
            Ok((pid, io))
        })();
        if added.is_err() {
            rootfs::unshare_container(&self.shared, id);
        }
        added
    }

    /// Starts created container `id`; returns its init's guest PID.
    pub fn start_container(&self, id: &str) -> Result<u32, CoreError> {
        self.link.client().start_container(id).map_err(CoreError::Agent)
    }

    /// Starts process `exec_id` in container `id` ([`super::GuestLink::exec_process`]).
    pub fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        stdio: &StdioPaths,
    ) -> Result<(u32, ProcessIo), CoreError> {
        self.link.exec_process(id, exec_id, process, stdio)
    }

    /// Waits until process `exec_id` ("" = init) of container `id` exits
    /// ([`super::GuestLink::wait_process`]).
    pub fn wait_process(&self, id: &str, exec_id: &str) -> Result<WaitProcessResponse, CoreError> {
        self.link.wait_process(id, exec_id)
    }

    /// Removes container `id` from the guest (failures are logged: the
    /// host side goes regardless) and unshares its rootfs and volumes.
    pub fn remove_container(&self, id: &str) {
        if let Err(e) = self.link.client().remove_container(id) {
            log::warn!("remove {id} in the guest: {}", e.message());
        }
        rootfs::unshare_container(&self.shared, id);
    }
}
