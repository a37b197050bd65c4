//! Lays out rayshape-webhook's code by use: the functions that run while serving first, the
//! start-up ones after them, through LLD's --symbol-ordering-file (symbol-order.txt, made by
//! bench/symbol-order.sh). Fewer code pages are then touched, and the kernel keeps fewer
//! resident (BENCHMARKS.md, "Code laid out by use"). Only for optimised builds on
//! x86_64-unknown-linux-gnu, where rustc links with LLD; RAYSHAPE_SYMBOL_ORDER=0 turns it
//! off (for a linker that is not LLD, e.g. GNU ld or gold chosen in RUSTFLAGS or in a
//! .cargo/config.toml the build script cannot see). The same file is in sidecar/build.rs.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
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
        && !order.to_string_lossy().contains(',');
    if wanted {
        println!(
            "cargo:rustc-link-arg-bin={}=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
            var("CARGO_PKG_NAME"),
            order.display()
        );
    }
}
