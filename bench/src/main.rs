//! `herald-bench`: Herald's load generator (planned in the benchmarks issue).
//!
//! Run with: `cargo run -p herald-bench --release`

fn main() {
    eprintln!("herald-bench: not implemented yet; see bench/README.md");
    std::process::exit(2);
}
