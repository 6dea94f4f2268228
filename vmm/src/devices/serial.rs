//! COM1: a 16550A UART (vm-superio) whose output goes to stdout, a file or
//! nowhere. Guest input is not wired yet (nothing reads the console).

use std::fs::{File, OpenOptions};
use std::io::{self, LineWriter, Write};
use std::path::Path;

use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Serial;

use super::bus::BusDevice;
use super::trigger::EventFdTrigger;

pub use kata_like_vmm_contract::SerialOutput;

/// Default size cap of a console file.
pub const DEFAULT_FILE_LIMIT: u64 = kata_like_vmm_contract::args::DEFAULT_SERIAL_LIMIT;

/// Opens the console sink. Files are opened for append so that several boots
/// can share a log, and never grow beyond `file_limit` bytes
/// ([`CappedFile`]): the guest controls what it prints, and a guest that
/// floods its console must not fill the host's disk.
pub fn open_output(output: &SerialOutput, file_limit: u64) -> io::Result<Box<dyn Write + Send>> {
    Ok(match output {
        SerialOutput::Stdout => Box::new(io::stdout()),
        SerialOutput::Null => Box::new(io::sink()),
        SerialOutput::File(path) => Box::new(LineWriter::new(CappedFile::open(path, file_limit)?)),
    })
}

/// An append-only console file that keeps the newest output within a size
/// cap: a write that would take it past the cap first empties the file and
/// starts it again with a line saying how much was dropped. The newest
/// output (a panic message, the agent's last words) is what matters for
/// debugging, so that is what survives a flood.
#[derive(Debug)]
pub struct CappedFile {
    file: File,
    size: u64,
    limit: u64,
    dropped: u64,
}

impl CappedFile {
    /// Opens (creates) `path` for append with a cap of `limit` bytes.
    pub fn open(path: &Path, limit: u64) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(CappedFile { file, size, limit: limit.max(4096), dropped: 0 })
    }
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let buf = &buf[..buf.len().min(self.limit as usize / 2)];
        if self.size + buf.len() as u64 > self.limit {
            // O_APPEND: the next write lands at the new end, offset 0.
            self.file.set_len(0)?;
            self.dropped += self.size;
            let note = format!(
                "[kata-like-vmm: the console log reached its {} byte cap; {} bytes of older output were dropped]\n",
                self.limit, self.dropped
            );
            self.file.write_all(note.as_bytes())?;
            self.size = note.len() as u64;
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The UART's registers in a snapshot: DLL, DLM, IER, IIR, LCR, LSR, MCR,
/// MSR, SCR (vm-superio's `SerialState` has no serde support), and the
/// receive FIFO.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    /// The nine registers, in the order above.
    pub registers: [u8; 9],
    /// Bytes the guest has not read yet.
    pub in_buffer: Vec<u8>,
}

/// The UART on the port bus.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialDevice")
    }
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        SerialDevice { serial: Serial::new(irq, out) }
    }

    /// A UART resumed from a snapshot's register state. A snapshot whose
    /// receive FIFO is over-full is refused (it can only be corrupt).
    pub fn from_snapshot(irq: EventFdTrigger, out: Box<dyn Write + Send>, snap: &SerialSnapshot) -> io::Result<Self> {
        let state = SerialState {
            baud_divisor_low: snap.registers[0],
            baud_divisor_high: snap.registers[1],
            interrupt_enable: snap.registers[2],
            interrupt_identification: snap.registers[3],
            line_control: snap.registers[4],
            line_status: snap.registers[5],
            modem_control: snap.registers[6],
            modem_status: snap.registers[7],
            scratch: snap.registers[8],
            in_buffer: snap.in_buffer.clone(),
        };
        let serial = Serial::from_state(&state, irq, NoEvents, out)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("serial state: {e}")))?;
        Ok(SerialDevice { serial })
    }

    /// The register state for a snapshot.
    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.serial.state();
        SerialSnapshot {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }

    /// Flushes buffered console output (called before the VMM exits).
    pub fn flush(&mut self) {
        let _ = self.serial.writer_mut().flush();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 {
            data[0] = self.serial.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        if let Err(e) = self.serial.write(offset as u8, data[0]) {
            // The console is best effort: a full disk must not stop the VM.
            tracing::debug!(error = ?e, "serial output failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn guest_bytes_reach_the_sink() {
        let sink = Shared::default();
        let irq = EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        let mut dev = SerialDevice::new(irq, Box::new(sink.clone()));
        for byte in b"hi\n" {
            dev.write(0, &[*byte]);
        }
        assert_eq!(sink.0.lock().expect("lock").as_slice(), b"hi\n");
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmit holding register empty");
    }

    #[test]
    fn register_state_survives_a_snapshot() {
        let irq = || EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        let mut dev = SerialDevice::new(irq(), Box::new(io::sink()));
        dev.write(3, &[0x83]); // LCR: DLAB + 8 bits
        dev.write(7, &[0x5a]); // scratch
        let snap = dev.snapshot();
        let mut back = SerialDevice::from_snapshot(irq(), Box::new(io::sink()), &snap).expect("restores");
        let mut scr = [0u8];
        back.read(7, &mut scr);
        assert_eq!(scr, [0x5a]);
        assert_eq!(back.snapshot(), snap);
        let bad = SerialSnapshot { in_buffer: vec![0; 1000], ..snap };
        assert!(SerialDevice::from_snapshot(irq(), Box::new(io::sink()), &bad).is_err());
    }

    #[test]
    fn a_flooded_console_file_keeps_its_newest_output_within_the_cap() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("console.log");
        std::fs::write(&path, "previous boot\n").expect("seed");
        let mut out = CappedFile::open(&path, 4096).expect("open");
        for i in 0..2000 {
            writeln!(out, "flood line {i:05}").expect("write");
        }
        out.flush().expect("flush");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.len() <= 4096, "{} bytes", text.len());
        assert!(text.starts_with("[kata-like-vmm: the console log reached its 4096 byte cap;"), "{text}");
        assert!(text.ends_with("flood line 01999\n"), "newest output kept");
        assert!(!text.contains("previous boot"));
        // One write larger than the cap is cut, not refused.
        let mut out = CappedFile::open(&path, 4096).expect("open");
        assert_eq!(out.write(&[b'x'; 10_000]).expect("write"), 2048);
        assert!(std::fs::metadata(&path).expect("stat").len() <= 4096);
    }

    #[test]
    fn output_spec_parses() {
        assert_eq!("stdout".parse::<SerialOutput>(), Ok(SerialOutput::Stdout));
        assert_eq!("null".parse::<SerialOutput>(), Ok(SerialOutput::Null));
        assert_eq!("/tmp/c.log".parse::<SerialOutput>(), Ok(SerialOutput::File("/tmp/c.log".into())));
    }
}
