//! Applying a plan: the only code that touches the outside world. One module per external
//! system, each behind a trait so the decision logic can be tested with fakes.

pub mod env_file;
pub mod health;
pub mod hooks;
pub mod notify;
pub mod proxy;
pub mod runtime;
