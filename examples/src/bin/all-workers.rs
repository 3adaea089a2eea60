//! `all-workers`: workers of every example saga in one process (handy with jetsaga dev).

use jetsaga_examples::runner::{self, Binary};
use jetsaga_examples::services;

fn main() -> anyhow::Result<()> {
    runner::main(Binary {
        name: "all-workers",
        about: "workers of every example saga in one process (handy with jetsaga dev)",
        services: services::ALL,
    })
}
