//! The `fleetwire` binary: see `fleetwire --help`.

fn main() -> std::process::ExitCode {
    fleetwire::main()
}
