use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("fieldtrack: not implemented yet");
    ExitCode::from(1)
}
