//! Integration tests: the real zdd binary against a real nginx and real
//! app processes. One test binary, with shared helpers in `support`.

mod support;

mod core;
mod examples;
mod faults;
mod guards;
mod hostile;
mod keeper;
mod logs;
mod maintenance;
mod newcomer;
mod operator;
mod releases;
mod rotation;
mod servers;
mod steering;
mod zero_downtime;
