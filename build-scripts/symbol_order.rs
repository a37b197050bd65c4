//! The build script of rayshape-webhook and rayshape-sidecar (their Cargo.toml `build`): lays
//! out the binary's code by use, the functions that run while serving or shipping first, the
//! start-up ones after them, through LLD's --symbol-ordering-file (the package's
//! symbol-order.txt, made by bench/symbol-order.sh). Fewer code pages are then touched, and
//! the kernel keeps fewer resident (BENCHMARKS.md, "Code laid out by use"). Only for
//! optimised builds for x86_64-unknown-linux-gnu by a rustc of 1.90 or later that has its
//! own LLD, which it then links with (otherwise the system's GNU ld links, which has no such
//! option). Off with RAYSHAPE_SYMBOL_ORDER=0, and by itself when RUSTFLAGS or
//! CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER choose another linker; set it to 0 for a
//! linker chosen in a .cargo/config.toml, which a build script cannot see.

use std::env;
use std::path::Path;
use std::process::Command;

/// Whether rustc links x86_64-unknown-linux-gnu with its own LLD: 1.90 or later (from
/// `rustc -V`, "rustc 1.95.0 (59807616e 2026-04-14)") and shipped with it (a distribution's
/// rustc may be built without and use the system's linker).
fn rustc_links_with_its_lld() -> bool {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let run = |args: &[&str]| {
        Command::new(&rustc)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let version = run(&["-V"]);
    let mut numbers = version
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let lld = Path::new(&run(&["--print", "sysroot"]))
        .join("lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld/ld.lld");
    (major, minor) >= (1, 90) && lld.is_file()
}

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-env-changed=RAYSHAPE_SYMBOL_ORDER");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let rustflags = var("CARGO_ENCODED_RUSTFLAGS").replace('\x1f', " ");
    let other_linker = [
        "linker-features=-lld",
        "link-self-contained=-linker",
        "fuse-ld",
        "linker-flavor",
        "-Clinker=",
        "-C linker=",
    ]
    .iter()
    .any(|f| rustflags.contains(f));
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join("symbol-order.txt");
    let wanted = var("RAYSHAPE_SYMBOL_ORDER") != "0"
        && var("TARGET") == "x86_64-unknown-linux-gnu"
        && var("OPT_LEVEL") != "0"
        && var("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_empty()
        && !other_linker
        && order.is_file()
        && !order.to_string_lossy().contains(',')
        && rustc_links_with_its_lld();
    if wanted {
        println!(
            "cargo:rustc-link-arg-bin={}=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
            var("CARGO_PKG_NAME"),
            order.display()
        );
    }
}
