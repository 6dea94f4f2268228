//! `kata-like-image-builder`: writes the guest initramfs.
//!
//! With `--cache-dir` the image goes to `<dir>/<input hash>/initrd.cpio[.gz]`
//! (built only if missing) and its path is printed; with `--output` it is
//! written where asked.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kata_like_image_builder::{build, build_cached, ImageSpec};

#[derive(Debug, Parser)]
#[command(name = "kata-like-image-builder", version, about = "Builds the kata-like guest initramfs")]
struct Cli {
    /// Static agent binary (becomes /init).
    #[arg(long)]
    agent: PathBuf,
    /// Static busybox to include as /bin/busybox.
    #[arg(long)]
    busybox: Option<PathBuf>,
    /// gzip the archive.
    #[arg(long)]
    gzip: bool,
    /// Write the image here.
    #[arg(long, conflicts_with = "cache_dir", required_unless_present = "cache_dir")]
    output: Option<PathBuf>,
    /// Build into this cache directory, keyed by input hash, and print the path.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let spec = ImageSpec { agent: cli.agent, busybox: cli.busybox, gzip: cli.gzip };
    if let Some(dir) = cli.cache_dir {
        let path = build_cached(&spec, &dir)?;
        println!("{}", path.display());
    } else if let Some(output) = cli.output {
        let file = std::fs::File::create(&output).with_context(|| format!("cannot create {}", output.display()))?;
        build(&spec, std::io::BufWriter::new(file))?;
    }
    Ok(())
}
