//! `teamlog tls-init`: a new CA and member identity for a cluster run by
//! hand, and the cluster file section that names them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cluster::tls_files;

#[derive(clap::Args, Debug)]
pub struct TlsInitArgs {
    /// Directory for the files; created if missing.
    #[arg(long)]
    pub dir: PathBuf,
}

pub fn run(args: TlsInitArgs) -> Result<()> {
    let entry = tls_files::generate(&args.dir)
        .with_context(|| format!("making TLS files in {}", args.dir.display()))?;
    let cert = entry
        .cert
        .as_ref()
        .expect("generate makes a member identity");
    let key = entry
        .key
        .as_ref()
        .expect("generate makes a member identity");
    println!("# Add to the cluster file; give a TLog the same files with");
    println!(
        "#   --tls-ca {} --tls-cert {} --tls-key {}",
        entry.ca.display(),
        cert.display(),
        key.display()
    );
    println!("# Applications need only `ca`: without cert and key they may commit and read.");
    println!("[tls]");
    println!("ca = {:?}", entry.ca.display().to_string());
    println!("cert = {:?}", cert.display().to_string());
    println!("key = {:?}", key.display().to_string());
    Ok(())
}
