//! Where the `notiflow` binary finds DuckDB's prebuilt library at run time.
//!
//! When the build links the official prebuilt `libduckdb.so` (infra/ sets
//! `DUCKDB_LIB_DIR`, SPEC §7), the binaries and test binaries of this crate
//! carry that folder as their rpath, so `target/debug/notiflow` runs from any
//! shell, not only one that sourced infra/'s env file. The bundled build
//! (feature `notiflow-reports/duckdb-bundled`) links DuckDB statically and
//! needs nothing.

fn main() {
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    if let Ok(dir) = std::env::var("DUCKDB_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
