//! Kernel symbol lookup from the `System.map` next to the kernel image, used
//! to name the guest RIP in fault reports and boot profiles.

use std::path::Path;

/// Sorted text symbols of a kernel.
#[derive(Debug, Default)]
pub struct KernelSymbols {
    symbols: Vec<(u64, String)>,
}

impl KernelSymbols {
    /// Reads `System.map` from the kernel's directory, if there is one.
    pub fn for_kernel(kernel: &Path) -> Option<Self> {
        let map = kernel.parent()?.join("System.map");
        let text = std::fs::read_to_string(map).ok()?;
        Some(Self::parse(&text))
    }

    /// Parses `address type name` lines, keeping code symbols.
    pub fn parse(text: &str) -> Self {
        let mut symbols: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                matches!(kind, "T" | "t" | "W" | "w").then(|| (addr, name.to_string()))
            })
            .collect();
        symbols.sort_unstable();
        KernelSymbols { symbols }
    }

    /// `name+0xoff` for `addr`, or None outside the kernel text.
    pub fn lookup(&self, addr: u64) -> Option<String> {
        let at = self.symbols.partition_point(|(a, _)| *a <= addr);
        let (base, name) = self.symbols.get(at.checked_sub(1)?)?;
        if at == self.symbols.len() && addr - base > 0x10_0000 {
            return None;
        }
        Some(format!("{name}+{:#x}", addr - base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_enclosing_function() {
        let syms = KernelSymbols::parse(
            "ffffffff81000000 T _stext\nffffffff81000100 t foo\nffffffff81000200 D data\nffffffff81000300 T bar\n",
        );
        assert_eq!(syms.lookup(0xffff_ffff_8100_0150).as_deref(), Some("foo+0x50"));
        assert_eq!(syms.lookup(0xffff_ffff_8100_0250).as_deref(), Some("foo+0x150"), "data symbols skipped");
        assert_eq!(syms.lookup(0x1000), None);
        assert_eq!(syms.lookup(0xffff_ffff_9000_0000), None, "far past the last symbol");
    }
}
