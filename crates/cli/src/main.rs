//! The `qwenrt` binary: everything is in the library (`lib.rs`).

fn main() {
    qwenrt_cli::main();
}
