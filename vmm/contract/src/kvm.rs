//! The KVM capabilities a kata-like VM needs, asked by `kata-like check`
//! before anything starts and by the VMM before it builds a VM.

use kvm_ioctls::{Cap, Kvm};

/// Each capability with the words a user is told when it is missing.
pub const REQUIRED_CAPS: [(Cap, &str); 5] = [
    (Cap::Irqchip, "an in-kernel IRQ chip (KVM_CAP_IRQCHIP)"),
    (Cap::Pit2, "an in-kernel PIT (KVM_CAP_PIT2)"),
    (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
    (Cap::Ioeventfd, "ioeventfd (KVM_CAP_IOEVENTFD)"),
    (Cap::UserMemory, "user memory regions (KVM_CAP_USER_MEMORY)"),
];

/// The first required capability `kvm` lacks, in words.
pub fn missing_capability(kvm: &Kvm) -> Option<&'static str> {
    REQUIRED_CAPS.iter().find(|(cap, _)| !kvm.check_extension(*cap)).map(|(_, name)| *name)
}
